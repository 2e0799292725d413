"""Tiny random-weight stand-ins for the evaluation's metric models (CLIP and DINO).

They join the engine's tiny models (:mod:`editor.tiny`), so that one folder and its
``config.yaml`` run the bot, the console and ``python -m evaluation`` offline.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from editor import tiny


def write_clip(folder: Path) -> None:
    """A tiny stand-in for ``openai/clip-vit-base-patch32`` (CLIP-I and CLIP-T metrics)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    config = CLIPConfig(
        text_config=tiny.clip_text_config().to_dict(),
        vision_config={**tiny.TINY_VISION, "projection_dim": 32},
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tiny.clip_tokenizer()).save_pretrained(folder)


def write_dino(folder: Path) -> None:
    """A tiny stand-in for ``facebook/dino-vits16`` (DINO metric)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    # Like facebook/dino-vits16, no pooler: the metric uses the class token.
    ViTModel(ViTConfig(**tiny.TINY_VISION), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


#: The ``evaluation`` section's model names and their folders under the output folder.
METRIC_MODELS = {"clip": ("tiny/clip-vit", write_clip), "dino": ("tiny/dino-vit", write_dino)}


def write_tiny_models(folder: str | Path, seed: int = 0) -> Path:
    """The engine's tiny models and config (:func:`editor.tiny.write_tiny_models`), plus CLIP and DINO
    and the ``evaluation`` section naming them; returns ``folder/config.yaml``."""
    folder = Path(folder)
    config_path = tiny.write_tiny_models(folder, seed)  # seeds torch: CLIP and DINO continue its stream
    for subfolder, writer in METRIC_MODELS.values():
        writer(folder / subfolder)
    section = {"evaluation": {name: subfolder for name, (subfolder, _) in METRIC_MODELS.items()}}
    with config_path.open("a", encoding="utf-8") as file:
        file.write(yaml.safe_dump(section, sort_keys=False))
    return config_path
