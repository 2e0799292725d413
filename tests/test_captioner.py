"""BLIP captioning on the tiny random-weight model, loaded like the real one, decoded as the paper's."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from editor.captioner import FALLBACK_CAPTION, Captioner
from editor.config import CaptionerConfig, engine_config, load_yaml

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def captioner(tiny_config: Path) -> Captioner:
    config = engine_config(load_yaml(tiny_config))
    return Captioner.from_pretrained(config.model_path("captioner"), "cpu", torch.float32, config.captioner)


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


@contextmanager
def _eager_to_stop(captioner: Captioner) -> Iterator[None]:
    """Make end-of-text overwhelmingly likely at every position."""
    bias = captioner.model.text_decoder.cls.predictions.bias
    original = bias.detach().clone()
    with torch.no_grad():
        bias[captioner.model.config.text_config.sep_token_id] = 1e4
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(original)


@contextmanager
def _generated(captioner: Captioner) -> Iterator[list[torch.Tensor]]:
    """The token sequences BLIP's generate returns, prompt included."""
    outputs: list[torch.Tensor] = []
    generate = captioner.model.generate

    def spy(**kwargs: object) -> torch.Tensor:
        output = generate(**kwargs)
        outputs.append(output)
        return output

    captioner.model.generate = spy
    try:
        yield outputs
    finally:
        del captioner.model.generate


def test_the_prompt_is_written_then_stripped(captioner: Captioner) -> None:
    prompt = captioner.config.prompt.strip()
    assert prompt
    with _generated(captioner) as outputs:
        caption = captioner.caption(_picture())
    decoded = captioner.processor.decode(outputs[0][0], skip_special_tokens=True)
    assert decoded == f"{prompt} {caption}"


def test_the_minimum_length_holds_even_when_the_model_would_stop(captioner: Captioner) -> None:
    """The paper's min length 10 (prompt included) keeps BLIP from stopping after the prompt."""
    with _eager_to_stop(captioner), _generated(captioner) as outputs:
        caption = captioner.caption(_picture())
    assert outputs[0].shape[1] >= captioner.config.min_length
    assert caption != FALLBACK_CAPTION
    assert len(caption.split()) >= captioner.config.min_length - len(captioner.config.prompt.split()) - 2


def test_empty_model_output_falls_back(captioner: Captioner) -> None:
    without_minimum = Captioner(
        captioner.processor,
        captioner.model,
        captioner.device,
        captioner.dtype,
        dataclasses.replace(captioner.config, prompt="", min_length=0),
    )
    with _eager_to_stop(captioner):
        assert without_minimum.caption(_picture()) == FALLBACK_CAPTION
    assert without_minimum.caption(_picture()) != FALLBACK_CAPTION


def test_the_default_decoding_is_the_papers() -> None:
    assert CaptionerConfig() == CaptionerConfig(
        prompt="a picture of ", num_beams=3, max_length=30, min_length=10
    )
