"""Previews of an edit forming: the latent -> RGB map fitted at load, on tiny random weights,
and the previews an edit hands out (which must not change the edit)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editor.config import edit_defaults, engine_config, load_yaml
from editor.engine import Editor
from editor.preview import UPSCALE, LatentPreview, PreviewMaker
from editor.types import EditRequest
from tests.test_service import picture

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def editor(tiny_config: Path) -> Editor:
    data = load_yaml(tiny_config)
    data["engine"] = {**data["engine"], "preview_interval_s": 0.0}
    return Editor.load(engine_config(data), replace(edit_defaults(data), steps=4))


def test_the_map_is_fitted_at_load_and_beats_a_flat_colour(editor: Editor) -> None:
    assert editor.latent_preview is not None
    assert tuple(editor.latent_preview.weights.shape) == (editor.diffusion.vae.config.latent_channels + 1, 3)
    image = Image.new("RGB", (64, 64), (220, 40, 30))
    image.paste(Image.new("RGB", (32, 64), (20, 90, 230)), (0, 0))
    latents = editor.diffusion.encode_image(image)
    decoded = np.asarray(editor.diffusion.decode(latents), dtype=np.float32)
    small = np.asarray(
        Image.fromarray(decoded.astype(np.uint8)).resize(
            tuple(latents.shape[-2:][::-1]), Image.Resampling.BOX
        ),
        dtype=np.float32,
    )
    preview = editor.latent_preview.image(latents)
    assert preview.size == (latents.shape[-1] * UPSCALE, latents.shape[-2] * UPSCALE)
    mapped = np.asarray(preview.resize(small.shape[1::-1], Image.Resampling.NEAREST), dtype=np.float32)
    assert np.abs(mapped - small).mean() < np.abs(small.mean((0, 1)) - small).mean()


def test_previews_come_during_the_edit_and_change_nothing(editor: Editor) -> None:
    request = EditRequest(
        image=picture(),
        instruction="add a hat",
        settings=editor.defaults,
        seed=2,
        captions=(("a",), ("a hat",)),
    )
    previews: list[bytes] = []
    watched = editor.edit(replace(request, previews=True), preview=previews.append)
    plain = editor.edit(request, preview=previews.append)  # not asked for: none
    assert len(previews) == editor.defaults.steps  # interval 0: one per step
    assert len(set(previews)) > 1, "the picture changes as the edit forms"
    with Image.open(io.BytesIO(previews[-1])) as shown:
        factor = editor.diffusion.vae_scale_factor
        assert shown.size == (64 // factor * UPSCALE, 48 // factor * UPSCALE)
    assert np.array_equal(np.asarray(watched.image), np.asarray(plain.image))


def test_a_batch_preview_tiles_its_edits_and_the_maker_keeps_its_interval() -> None:
    latent_preview = LatentPreview(torch.zeros(5, 3))
    assert latent_preview.image(torch.zeros(4, 4, 6, 8)).size == (2 * 8 * UPSCALE, 2 * 6 * UPSCALE)
    made: list[bytes] = []
    maker = PreviewMaker(latent_preview, 3600.0, made.append)
    for step in range(1, 5):
        maker(step, 4, torch.zeros(1, 4, 6, 8))
    assert len(made) == 1, "the first at once, then at most one per interval"
