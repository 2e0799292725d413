"""Tiny random-weight models of the engine in the hub's folder layout, for offline runs and tests.

Their outputs are noise, but every line of the real loading and editing code runs on
them: they are saved with ``save_pretrained`` and loaded back through the same
``from_pretrained`` calls as the real models. The ``save_*`` functions lay out models of
any size (``bench/full_size_models.py`` uses them too); ``evaluation.tiny`` adds the
evaluation's CLIP and DINO on top of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# A small byte-level vocabulary shared by the CLIP and Phi tokenizers: printable ASCII
# (GPT-2's byte-to-unicode map keeps these as themselves; space is "Ġ") plus a few merges.
_ASCII = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
#: BPE merges as the tokenizers take them, (left, right) pairs; ``Any`` because transformers
#: annotates ``merges`` as strings, which its BPE model refuses.
BpeMerges = list[Any]
_MERGES: BpeMerges = [("Ġ", "a"), ("Ġ", "t"), ("t", "h"), ("e", "r"), ("i", "n"), ("o", "n")]
#: The size of every tiny transformer (CLIP, BLIP, ViT), so that a CPU runs them in milliseconds.
TINY_TRANSFORMER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
#: The vision towers' inputs: 32-pixel images in 8-pixel patches.
TINY_VISION: dict[str, Any] = {**TINY_TRANSFORMER, "image_size": 32, "patch_size": 8}


def _byte_vocab(special: list[str]) -> dict[str, int]:
    tokens = special + _ASCII + ["".join(pair) for pair in _MERGES]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def clip_tokenizer() -> Any:
    """A CLIP tokenizer over :data:`_ASCII`, shared by Stable Diffusion and the evaluation's CLIP."""
    from transformers import CLIPTokenizer

    words = [c for c in _ASCII if c not in ("Ġ", "Ċ")]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + words + [w + "</w>" for w in words]
    tokens += ["th", "er", "in", "on", "th</w>", "er</w>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    merges: BpeMerges = [("t", "h"), ("e", "r"), ("i", "n"), ("o", "n"), ("t", "h</w>"), ("e", "r</w>")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def clip_text_config() -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **TINY_TRANSFORMER,
        vocab_size=256,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,
    )


def write_stable_diffusion(folder: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    # The UNet and the VAE share one width: two blocks, of 32 and 64 channels.
    blocks = {"block_out_channels": (32, 64), "norm_num_groups": 32}
    unet = UNet2DConditionModel(
        **blocks,
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        **blocks,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=64,
    )
    save_stable_diffusion(folder, unet, vae, CLIPTextModel(clip_text_config()), clip_tokenizer())


def save_stable_diffusion(folder: Path, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> None:
    """Save SD parts in the hub's pipeline layout, with SD 1.5's DDIM scheduler settings."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    # Any: mypy resolves diffusers' lazy exports to its dummy classes, which have no methods.
    pipeline: Any = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)


def write_blip(folder: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "cat", "dog"]
    words += ["on", "the", "with", "red", "blue", "sitting", "table", "grass", "man", "woman", "##s"]
    config = BlipConfig(
        text_config={
            **TINY_TRANSFORMER,
            "vocab_size": len(words),
            "max_position_embeddings": 64,
            "bos_token_id": 5,
            "pad_token_id": 0,
            "sep_token_id": 3,
            "eos_token_id": 3,
        },
        vision_config=TINY_VISION,
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    model.generation_config.max_length = 20
    save_blip(folder, model, words, image_size=32, model_max_length=64)


def save_blip(folder: Path, model: Any, words: list[str], image_size: int, **tokenizer_options: Any) -> None:
    """Save a BLIP captioner with a tokenizer over ``words`` (BERT's specials first, then ``[DEC]``)."""
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]", **tokenizer_options)
    model.save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def write_phi(folder: Path) -> None:
    from transformers import PhiConfig, PhiForCausalLM

    vocab = _byte_vocab(["<|endoftext|>"])
    config = PhiConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    save_phi(folder, PhiForCausalLM(config), vocab, _MERGES, model_max_length=2048)


def save_phi(
    folder: Path, model: Any, vocab: dict[str, int], merges: BpeMerges, **tokenizer_options: Any
) -> None:
    """Save a Phi language model with a byte-level BPE tokenizer (Phi-2's CodeGen tokenizer)."""
    from transformers import CodeGenTokenizer

    model.save_pretrained(folder)
    CodeGenTokenizer(vocab=vocab, merges=list(merges), **tokenizer_options).save_pretrained(folder)


#: Folder names under the output folder, as the hub lays them out (owner/name).
TINY_MODELS = {
    "captioner": ("tiny/blip-image-captioning", write_blip),
    "language_model": ("tiny/phi", write_phi),
    "diffusion": ("tiny/stable-diffusion", write_stable_diffusion),
}


def write_tiny_models(folder: str | Path, seed: int = 0) -> Path:
    """Write the engine's tiny models and ``folder/config.yaml`` pointing at them; return that file.

    The config runs the bot and the console offline: small resolution and few steps so an
    edit takes seconds on a CPU, the database and outputs inside ``folder``.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for subfolder, writer in TINY_MODELS.values():
        writer(folder / subfolder)
    config = {
        "engine": {
            "models": {name: subfolder for name, (subfolder, _) in TINY_MODELS.items()},
            "device": "cpu",
            "dtype": "float32",
            "resolution": 64,
            # Short captions in the tiny vocabulary, so that they and an instruction fit CLIP's 77 tokens.
            "captioner": {"prompt": "a photo of ", "max_length": 14, "min_length": 10},
            "language_model": {"caption_tokens": 4, "max_attempts": 2},
        },
        "edit": {"steps": 4, "num_captions": 2},
    }
    config_path = folder / "config.yaml"
    header = "# Tiny random-weight models: offline runs and tests (outputs are noise).\n"
    config_path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_path
