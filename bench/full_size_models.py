"""Full-size random-weight models (SD 1.5, BLIP base, Phi-2 shapes) for timing on a GPU.

Weight values do not change speed, so these give real timings without any download. The
tokenizers are small made-up vocabularies padded to the real vocabulary sizes, so every id
the random models emit decodes to something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from editor.tiny import BpeMerges, save_blip, save_phi, save_stable_diffusion

SAVE_DTYPE = torch.float16  # halves what is written; the engine casts to its own dtype


def _filler(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{index}" for index in range(count)]


def _half(model: Any) -> Any:
    """``model`` in :data:`SAVE_DTYPE` (``Any``: mypy sees diffusers' dummy classes, and
    transformers' ``to`` hides its ``self`` behind ``functools.wraps``)."""
    return model.to(SAVE_DTYPE)


def write_stable_diffusion_15(folder: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # the rest are SD 1.5 defaults
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    letters = [chr(c) for c in range(97, 123)]
    tokens = [*letters, *(c + "</w>" for c in letters), "ab"]
    tokens += [*_filler(49406 - len(tokens), "tok"), "<|startoftext|>", "<|endoftext|>"]
    merges: BpeMerges = [("a", "b")]
    tokenizer = CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)}, merges=merges, model_max_length=77
    )
    text_encoder = CLIPTextModel(text_config)
    save_stable_diffusion(folder, _half(unet), _half(vae), _half(text_encoder), tokenizer)


def write_blip_base(folder: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration

    config = BlipConfig()  # defaults are BLIP base: ViT-B/16 at 384 px, a 12-layer BERT decoder
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    words += _filler(30524 - len(words), "w")  # BLIP base's vocabulary size
    save_blip(folder, _half(BlipForConditionalGeneration(config)), words, image_size=384)


def write_phi_2(folder: Path) -> None:
    from transformers import PhiConfig, PhiForCausalLM

    config = PhiConfig(
        vocab_size=51200,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4},
        bos_token_id=50256,
        eos_token_id=50256,
    )
    byte_tokens = [*(chr(c) for c in range(33, 127)), "Ġ", "Ċ", "Ġa"]
    tokens = byte_tokens + _filler(50256 - len(byte_tokens), "t") + ["<|endoftext|>"]
    tokens += _filler(config.vocab_size - len(tokens), "x")
    vocab = {token: index for index, token in enumerate(tokens)}
    save_phi(folder, _half(PhiForCausalLM(config)), vocab, [("Ġ", "a")])


def write_full_size_models(folder: Path, device: str = "cpu") -> Path:
    """Write the three models and ``folder/config.yaml`` (CUDA, float16, 512 px).

    ``device`` is where the random weights are drawn: on a GPU Phi-2's 2.7 B take a second,
    on the CPU about a minute.
    """
    folder = Path(folder)
    torch.manual_seed(0)
    with torch.device(device):
        write_stable_diffusion_15(folder / "random/stable-diffusion-v1-5")
        write_blip_base(folder / "random/blip-image-captioning-base")
        write_phi_2(folder / "random/phi-2")
    config = {
        "engine": {
            "models": {
                "captioner": "random/blip-image-captioning-base",
                "language_model": "random/phi-2",
                "diffusion": "random/stable-diffusion-v1-5",
            },
            "resolution": 512,
        },
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
