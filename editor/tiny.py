"""Tiny random-weight models in the hub's folder layout, for offline runs and tests.

Their outputs are noise, but every line of the real loading and editing code runs on
them: they are saved with ``save_pretrained`` and loaded back through the same
``from_pretrained`` calls as the real models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# A small byte-level vocabulary shared by the CLIP and Phi tokenizers: printable ASCII
# (GPT-2's byte-to-unicode map keeps these as themselves; space is "Ġ") plus a few merges.
_ASCII = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
_MERGES = [("Ġ", "a"), ("Ġ", "t"), ("t", "h"), ("e", "r"), ("i", "n"), ("o", "n")]


def _byte_vocab(special: list[str]) -> dict[str, int]:
    tokens = special + _ASCII + ["".join(pair) for pair in _MERGES]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    words = [c for c in _ASCII if c not in ("Ġ", "Ċ")]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + words + [w + "</w>" for w in words]
    tokens += ["th", "er", "in", "on", "th</w>", "er</w>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    merges = [("t", "h"), ("e", "r"), ("i", "n"), ("o", "n"), ("t", "h</w>"), ("e", "r</w>")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,
    )


def write_stable_diffusion(folder: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    save_stable_diffusion(folder, unet, vae, CLIPTextModel(_clip_text_config()), _clip_tokenizer())


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
    pipeline = StableDiffusionPipeline(
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
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "cat", "dog"]
    words += ["on", "the", "with", "red", "blue", "sitting", "table", "grass", "man", "woman", "##s"]
    vocab_file = folder / "vocab.txt"
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]", model_max_length=64)
    config = BlipConfig(
        text_config={
            "vocab_size": len(words),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": 5,
            "pad_token_id": 0,
            "sep_token_id": 3,
            "eos_token_id": 3,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    model.generation_config.max_length = 20
    model.save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def write_phi(folder: Path) -> None:
    from transformers import CodeGenTokenizer, PhiConfig, PhiForCausalLM

    vocab = _byte_vocab(["<|endoftext|>"])
    tokenizer = CodeGenTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=2048)
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
    model = PhiForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_clip(folder: Path) -> None:
    """A tiny stand-in for ``openai/clip-vit-base-patch32`` (CLIP-I and CLIP-T metrics)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text = _clip_text_config().to_dict()
    config = CLIPConfig(
        text_config=text,
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        },
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=_clip_tokenizer()).save_pretrained(folder)


def write_dino(folder: Path) -> None:
    """A tiny stand-in for ``facebook/dino-vits16`` (DINO metric)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    # Like facebook/dino-vits16, no pooler: the metric uses the class token.
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


#: Folder names under the output folder, as the hub lays them out (owner/name).
TINY_MODELS = {
    "captioner": ("tiny/blip-image-captioning", write_blip),
    "language_model": ("tiny/phi", write_phi),
    "diffusion": ("tiny/stable-diffusion", write_stable_diffusion),
    "clip": ("tiny/clip-vit", write_clip),
    "dino": ("tiny/dino-vit", write_dino),
}


def write_tiny_models(folder: str | Path, seed: int = 0) -> Path:
    """Write every tiny model and ``folder/config.yaml`` pointing at them; return that file.

    The config runs the whole project offline: small resolution and few steps so an edit
    takes seconds on a CPU, the database and outputs inside ``folder``.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for subfolder, writer in TINY_MODELS.values():
        writer(folder / subfolder)
    config = {
        "engine": {
            "models": {name: TINY_MODELS[name][0] for name in ("captioner", "language_model", "diffusion")},
            "device": "cpu",
            "dtype": "float32",
            "resolution": 64,
            "language_model": {"max_new_tokens": 48, "max_attempts": 2},
        },
        "edit": {"steps": 4, "num_captions": 2},
        "evaluation": {"clip": TINY_MODELS["clip"][0], "dino": TINY_MODELS["dino"][0]},
    }
    config_path = folder / "config.yaml"
    header = "# Tiny random-weight models: offline runs and tests (outputs are noise).\n"
    config_path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_path
