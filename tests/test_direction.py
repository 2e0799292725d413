"""Caption embeddings and the edit direction, on hand-made tensors and the tiny SD text encoder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from editor.direction import BATCH_SIZE, ClipTokenLimit, edit_direction, encode_captions

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir: Path) -> StableDiffusionPipeline:
    """The tiny SD loaded by diffusers itself: its tokenizer, text encoder and reference encoding."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(tiny_models_dir / "tiny/stable-diffusion"))


def test_direction_is_mean_after_minus_mean_before() -> None:
    before = torch.stack([torch.full((3, 4), 1.0), torch.full((3, 4), 3.0)])
    after = torch.stack([torch.full((3, 4), 10.0), torch.full((3, 4), 20.0), torch.full((3, 4), 30.0)])
    direction = edit_direction(before, after)
    assert direction.shape == (1, 3, 4)
    assert torch.equal(direction, torch.full((1, 3, 4), 20.0 - 2.0))


def test_direction_is_per_token_and_per_feature() -> None:
    before = torch.arange(24, dtype=torch.float32).reshape(1, 3, 8)
    after = torch.zeros(1, 3, 8)
    assert torch.equal(edit_direction(before, after), -before)


def test_half_precision_keeps_its_dtype_and_accuracy() -> None:
    before = torch.full((4, 2, 2), 1000.0, dtype=torch.float16)
    after = torch.full((4, 2, 2), 1000.5, dtype=torch.float16)
    direction = edit_direction(before, after)
    assert direction.dtype == torch.float16
    assert torch.equal(direction, torch.full((1, 2, 2), 0.5, dtype=torch.float16))


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (torch.zeros(3, 4), torch.zeros(1, 3, 4), "captions, tokens, dim"),
        (torch.zeros(1, 3, 4), torch.zeros(1, 3, 5), "differ in shape"),
        (torch.zeros(0, 3, 4), torch.zeros(1, 3, 4), "at least one caption"),
    ],
)
def test_direction_refuses_mismatched_embeddings(
    before: torch.Tensor, after: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        edit_direction(before, after)


def test_encoding_matches_stable_diffusions_prompt_encoding(pipeline: StableDiffusionPipeline) -> None:
    captions = ["a cat sitting on a table", "a photo of a dog", "x" * 500]
    embeds = encode_captions(pipeline.tokenizer, pipeline.text_encoder, captions)
    reference, _ = pipeline.encode_prompt(
        captions, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    assert embeds.shape == (3, 77, pipeline.text_encoder.config.hidden_size)
    assert embeds.dtype == torch.float32
    assert not embeds.requires_grad
    torch.testing.assert_close(embeds, reference)


def test_batching_does_not_change_the_embeddings(pipeline: StableDiffusionPipeline) -> None:
    captions = [f"a photo of {index} cats" for index in range(BATCH_SIZE + 3)]
    together = encode_captions(pipeline.tokenizer, pipeline.text_encoder, captions)
    one_by_one = torch.cat(
        [encode_captions(pipeline.tokenizer, pipeline.text_encoder, [c]) for c in captions]
    )
    assert together.shape[0] == len(captions)
    torch.testing.assert_close(together, one_by_one)


def test_same_captions_give_a_zero_direction(pipeline: StableDiffusionPipeline) -> None:
    captions = ["a red car", "a blue house"]
    before = encode_captions(pipeline.tokenizer, pipeline.text_encoder, captions)
    after = encode_captions(pipeline.tokenizer, pipeline.text_encoder, list(reversed(captions)))
    direction = edit_direction(before, after)
    assert direction.shape == (1, 77, pipeline.text_encoder.config.hidden_size)
    torch.testing.assert_close(direction, torch.zeros_like(direction))


def test_different_captions_give_a_non_zero_direction(pipeline: StableDiffusionPipeline) -> None:
    before = encode_captions(pipeline.tokenizer, pipeline.text_encoder, ["a red car"])
    after = encode_captions(pipeline.tokenizer, pipeline.text_encoder, ["a red car in the snow"])
    assert edit_direction(before, after).abs().sum() > 0


@pytest.mark.parametrize("captions", [[], "a single string"])
def test_encoding_needs_a_list_of_captions(pipeline: StableDiffusionPipeline, captions: object) -> None:
    with pytest.raises(ValueError, match="non-empty sequence"):
        encode_captions(pipeline.tokenizer, pipeline.text_encoder, captions)


# --- the text encoder's token limit ---------------------------------------------------------------


def test_token_limit_counts_the_encoders_tokens(pipeline: StableDiffusionPipeline) -> None:
    limit = ClipTokenLimit(pipeline.tokenizer)
    assert limit.limit == pipeline.tokenizer.model_max_length - 2
    for text in ("a cat", "a red car parked by the road", "x" * 90):
        ids = pipeline.tokenizer(text).input_ids
        assert limit.count(text) == len(ids) - 2  # start and end tokens


def test_long_captions_are_shortened_at_a_word_boundary(pipeline: StableDiffusionPipeline) -> None:
    limit = ClipTokenLimit(pipeline.tokenizer)
    caption = "a cat sitting on a red table, " * 6 + "with a dog"
    assert limit.count(caption) > limit.limit
    shortened = limit.shorten(caption)
    assert shortened is not None
    assert limit.count(shortened) <= limit.limit
    assert caption.startswith(shortened)
    assert caption[len(shortened)] in " ,"  # cut between words
    next_word = caption[len(shortened) :].split(maxsplit=1)[0]
    assert limit.count(f"{shortened} {next_word}".rstrip(",")) > limit.limit  # the longest that fits
    assert not shortened.endswith(",")


def test_fitting_captions_are_kept_and_one_giant_word_cannot_be_shortened(
    pipeline: StableDiffusionPipeline,
) -> None:
    limit = ClipTokenLimit(pipeline.tokenizer)
    assert limit.shorten("a cat on a table") == "a cat on a table"
    assert limit.shorten("a cat on a table", limit=limit.count("a cat")) == "a cat"
    assert limit.shorten("x" * 200) is None


def test_a_difference_past_the_limit_is_lost_unless_shortened(pipeline: StableDiffusionPipeline) -> None:
    """Why captions are fitted: the encoder drops the tail, so captions that differ only there
    give a zero direction; fitted, their equality is visible before anything is encoded."""
    limit = ClipTokenLimit(pipeline.tokenizer)
    base = "a cat sitting on a red table " * 4
    before, after = base + "in summer", base + "in winter"
    embeds = encode_captions(pipeline.tokenizer, pipeline.text_encoder, [before, after])
    assert torch.equal(embeds[0], embeds[1])
    assert limit.shorten(before) == limit.shorten(after)
