"""The five metrics against values worked out by hand, and CLIP/DINO on the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from evaluation.metrics import (
    CLIP_MEAN,
    CLIP_STD,
    Scorer,
    center_crop,
    normalised_tensor,
    pixel_errors,
    resize_shorter_side,
)

BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def half_white(size: tuple[int, int] = (64, 64)) -> Image.Image:
    image = solid(BLACK, size)
    image.paste(WHITE, (0, 0, size[0] // 2, size[1]))
    return image


@pytest.fixture(scope="module")
def scorer(tiny_models_dir: Path) -> Scorer:
    torch.set_num_threads(1)
    return Scorer.from_pretrained(
        str(tiny_models_dir / "tiny" / "clip-vit"), str(tiny_models_dir / "tiny" / "dino-vit"), "cpu"
    )


def test_identical_images_have_no_pixel_error() -> None:
    assert pixel_errors(half_white(), half_white()) == (0.0, 0.0)


def test_black_against_white_is_the_largest_error() -> None:
    assert pixel_errors(solid(BLACK), solid(WHITE)) == (1.0, 1.0)


def test_half_white_against_black_is_half() -> None:
    assert pixel_errors(half_white(), solid(BLACK)) == (0.5, 0.5)


def test_one_channel_off_by_51_counts_over_all_three_channels() -> None:
    l1, l2 = pixel_errors(solid((51, 0, 0)), solid(BLACK))

    assert l1 == pytest.approx(0.2 / 3)
    assert l2 == pytest.approx(0.04 / 3)


def test_the_generated_image_is_resized_to_the_ground_truth_not_the_other_way() -> None:
    generated = half_white((128, 64))
    truth = half_white((32, 32))

    expected = pixel_errors(generated.resize((32, 32), Image.Resampling.BICUBIC), truth)
    assert pixel_errors(generated, truth) == expected
    assert pixel_errors(solid(WHITE, (512, 512)), solid(WHITE, (100, 60))) == (0.0, 0.0)


def test_grey_and_alpha_images_are_compared_as_rgb() -> None:
    assert pixel_errors(Image.new("L", (8, 8), 255), Image.new("RGBA", (8, 8), (255, 255, 255, 0))) == (
        0.0,
        0.0,
    )


def test_resize_shorter_side_keeps_the_aspect_and_truncates_like_torchvision() -> None:
    assert resize_shorter_side(solid(BLACK, (100, 50)), 32).size == (64, 32)
    assert resize_shorter_side(solid(BLACK, (50, 99)), 32).size == (32, 63)
    assert resize_shorter_side(solid(BLACK, (300, 300)), 256).size == (256, 256)


def test_center_crop_takes_the_middle() -> None:
    image = Image.new("L", (10, 4))
    image.putdata([x * 20 for _ in range(4) for x in range(10)])

    cropped = center_crop(image, 4)

    assert cropped.size == (4, 4)
    assert [cropped.getpixel((x, 0)) for x in range(4)] == [60, 80, 100, 120]


def test_normalisation_uses_the_given_mean_and_std() -> None:
    batch = normalised_tensor([solid(WHITE, (40, 20))], 16, 16, CLIP_MEAN, CLIP_STD)

    assert batch.shape == (1, 3, 16, 16)
    for channel in range(3):
        expected = (1 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert batch[0, channel].flatten().tolist() == pytest.approx([expected] * 256, rel=1e-5)


def test_identical_images_score_one_on_clip_i_and_dino(scorer: Scorer) -> None:
    scores = scorer.score(half_white(), half_white(), "a half white square")

    assert scores.l1 == scores.l2 == 0.0
    assert scores.clip_i == pytest.approx(1.0, abs=1e-6)
    assert scores.dino == pytest.approx(1.0, abs=1e-6)


def test_different_images_score_below_one_and_symmetrically(scorer: Scorer) -> None:
    first, second = half_white(), solid((30, 200, 90))

    forward, backward = scorer.score(first, second, None), scorer.score(second, first, None)

    assert -1.0 <= forward.clip_i < 0.9999
    assert -1.0 <= forward.dino < 0.9999
    assert forward.clip_i == pytest.approx(backward.clip_i)
    assert forward.dino == pytest.approx(backward.dino)


def test_clip_t_is_the_image_text_cosine_of_clip_itself(scorer: Scorer) -> None:
    """CLIPModel's own logits, divided by its temperature, are that cosine: an independent path."""
    image, caption = half_white(), "a white half"
    tokens = scorer.clip_tokenizer([caption], return_tensors="pt")
    pixels = normalised_tensor([image], scorer.clip_size, scorer.clip_size, CLIP_MEAN, CLIP_STD)
    with torch.inference_mode():
        output = scorer.clip_model(input_ids=tokens["input_ids"], pixel_values=pixels)
        expected = float(output.logits_per_image[0, 0] / scorer.clip_model.logit_scale.exp())

    assert scorer.score(image, solid(BLACK), caption).clip_t == pytest.approx(expected, abs=1e-5)


def test_clip_t_uses_the_generated_image_not_the_ground_truth(scorer: Scorer) -> None:
    caption = "a white half"
    with_truth_a = scorer.score(half_white(), solid(BLACK), caption).clip_t
    with_truth_b = scorer.score(half_white(), solid((10, 200, 10)), caption).clip_t
    other_generated = scorer.score(solid((10, 200, 10)), solid(BLACK), caption).clip_t

    assert with_truth_a == pytest.approx(with_truth_b)
    assert other_generated != pytest.approx(with_truth_a)


def test_clip_t_is_absent_without_a_caption(scorer: Scorer) -> None:
    assert scorer.score(half_white(), half_white(), None).clip_t is None


def test_dino_keeps_the_official_resize_to_crop_ratio(scorer: Scorer) -> None:
    """224 crop after a 256 resize for the real model; the same ratio for the 32-pixel tiny one."""
    assert scorer.dino_crop == 32
    assert scorer.dino_resize == 37


def test_dino_is_the_class_token_of_the_last_layer(scorer: Scorer) -> None:
    image = half_white()
    pixels = normalised_tensor(
        [image], scorer.dino_resize, scorer.dino_crop, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    with torch.inference_mode():
        hidden = scorer.dino_model(pixel_values=pixels).last_hidden_state

    assert torch.allclose(scorer.dino_embeddings([image])[0], hidden[0, 0])
