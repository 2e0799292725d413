"""The whole engine on tiny random-weight models: numbered steps, caching, errors."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editor.config import edit_defaults, engine_config, load_yaml
from editor.engine import Editor
from editor.types import EditCancelled, EditRequest, InvalidInput, Inversion


@pytest.fixture(scope="module")
def editor(tiny_config: Path) -> Editor:
    data = load_yaml(tiny_config)
    return Editor.load(engine_config(data), edit_defaults(data))


def _png(size: tuple[int, int] = (80, 60), color: str = "orange") -> bytes:
    image = Image.new("RGB", size, color)
    image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), "navy"), (5, 5))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32))


def test_edit_runs_every_stage_and_counts_the_work(editor: Editor) -> None:
    steps = editor.defaults.steps
    stages: list[str] = []
    result = editor.edit(
        EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults, seed=1),
        callback=lambda stage, step, total: stages.append(stage),
    )
    assert result.image.mode == "RGB"
    assert result.image.size == (64, 48)  # longer side = resolution, aspect kept, multiples of 8
    assert isinstance(result.caption, str)
    assert result.before_captions
    assert result.after_captions
    # The reconstruction runs inside the edit's steps (interleaved), reported as the edit.
    assert list(dict.fromkeys(stages)) == ["caption", "invert", "captions", "edit", "decode"]
    assert result.counts.unet_forwards["invert"] == steps
    assert result.counts.unet_batch_samples == {"invert": steps, "reconstruct": steps, "edit": 4 * steps}
    assert result.counts.unet_backwards == steps
    assert result.counts.lm_generate_calls >= 1
    assert result.counts.lm_tokens > 0
    assert {"caption", "invert", "captions", "edit", "decode"} <= set(result.timings)


def test_same_seed_gives_the_same_image(editor: Editor) -> None:
    request = EditRequest(image=_png(), instruction="make it night", settings=editor.defaults, seed=7)
    first, second = editor.edit(request), editor.edit(request)
    assert first.after_captions == second.after_captions
    assert torch.equal(_pixels(first.image), _pixels(second.image))


def test_cached_inversion_round_trips_through_bytes_and_skips_inversion(
    editor: Editor, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = EditRequest(image=_png(), instruction="add snow", settings=editor.defaults, seed=3)
    fresh = editor.edit(request)
    loaded = Inversion.from_bytes(fresh.inversion.to_bytes())
    assert torch.equal(loaded.latents, fresh.inversion.latents)
    assert (loaded.caption, loaded.key) == (fresh.inversion.caption, fresh.inversion.key)

    stages: list[str] = []
    encodes: list[int] = []
    vae = editor.diffusion.vae
    encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda *args, **kwargs: encodes.append(1) or encode(*args, **kwargs))
    reused = editor.edit(replace(request, inversion=loaded), callback=lambda s, *_: stages.append(s))
    assert "invert" not in reused.counts.unet_forwards
    assert "invert" not in stages
    assert "caption" not in stages
    assert encodes == []  # only the latents' shape is needed, and the image size gives it
    assert torch.equal(_pixels(reused.image), _pixels(fresh.image))


def test_inversion_made_under_other_settings_is_not_reused(editor: Editor) -> None:
    request = EditRequest(image=_png(), instruction="add snow", settings=editor.defaults, seed=3)
    inversion = editor.edit(request).inversion
    other_steps = replace(editor.defaults, steps=editor.defaults.steps + 1)
    result = editor.edit(replace(request, settings=other_steps, inversion=inversion))
    assert result.counts.unet_forwards["invert"] == other_steps.steps
    assert result.inversion.key != inversion.key


def test_caption_overrides_skip_the_language_model(editor: Editor) -> None:
    request = EditRequest(
        image=_png(),
        instruction="turn the cat into a dog",
        settings=editor.defaults,
        caption="a cat on a table",
        captions=(("a cat on a table",), ("a dog on a table",)),
    )
    result = editor.edit(request)
    assert result.caption == "a cat on a table"
    assert result.after_captions == ("a dog on a table",)
    assert result.counts.lm_generate_calls == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": b"not an image"}, "image"),
        ({"instruction": "   "}, "instruction"),
        ({"instruction": "x" * 5000}, "instruction"),
        ({"settings": "steps"}, "steps"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_input_is_refused_before_any_model_runs(editor: Editor, changes: dict, message: str) -> None:
    request = EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults)
    if changes.get("settings") == "steps":
        changes = {"settings": replace(editor.defaults, steps=0)}
    calls: list[str] = []
    with pytest.raises(InvalidInput, match=f"(?i){message}"):
        editor.edit(replace(request, **changes), callback=lambda s, *_: calls.append(s))
    assert calls == []


def test_cancel_stops_within_one_step_and_leaves_the_unet_as_it_was(editor: Editor) -> None:
    unet = editor.diffusion.unet
    processors = dict(unet.attn_processors)
    cancel = threading.Event()
    after_cancel: list[tuple[str, int]] = []

    def on_step(stage: str, step: int, total: int) -> None:
        if cancel.is_set():
            after_cancel.append((stage, step))
        if stage == "edit" and step == 1:
            cancel.set()

    with pytest.raises(EditCancelled):
        editor.edit(
            EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults),
            callback=on_step,
            cancel=cancel,
        )
    assert len(after_cancel) <= 1
    assert all(processors[name] is processor for name, processor in unet.attn_processors.items())
    assert not any(parameter.requires_grad for parameter in unet.parameters())
