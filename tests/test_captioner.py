"""BLIP captioning on the tiny random-weight model, loaded like the real one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from editor.captioner import FALLBACK_CAPTION, Captioner

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def captioner(tiny_models_dir: Path) -> Captioner:
    return Captioner.from_pretrained(
        str(tiny_models_dir / "tiny/blip-image-captioning"), "cpu", torch.float32
    )


def _picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    image = Image.new("RGB", size, "orange")
    image.paste((20, 20, 120), (4, 4, size[0] // 2, size[1] // 2))
    return image


def test_caption_is_one_non_empty_line(captioner: Captioner) -> None:
    caption = captioner.caption(_picture())
    assert isinstance(caption, str)
    assert caption
    assert caption == caption.strip()
    assert "\n" not in caption
    assert not captioner.model.training


def test_caption_is_deterministic(captioner: Captioner) -> None:
    assert captioner.caption(_picture()) == captioner.caption(_picture())


def test_any_mode_and_size_is_accepted(captioner: Captioner) -> None:
    assert captioner.caption(Image.new("RGBA", (17, 90), (0, 0, 0, 0)))


def test_empty_model_output_falls_back(captioner: Captioner) -> None:
    # Make end-of-text overwhelmingly likely: BLIP then stops before writing any word.
    bias = captioner.model.text_decoder.cls.predictions.bias
    original = bias.detach().clone()
    eos = captioner.model.generation_config.eos_token_id
    try:
        with torch.no_grad():
            bias[eos] = 1e4
        assert captioner.caption(_picture()) == FALLBACK_CAPTION
    finally:
        with torch.no_grad():
            bias.copy_(original)
    assert captioner.caption(_picture()) != FALLBACK_CAPTION
