"""``Editor.edit_many`` and the engine's offload and compile options, on tiny random weights."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editor.config import ConfigError, edit_defaults, engine_config, load_yaml
from editor.engine import Editor
from editor.types import EditCancelled, EditRequest, InvalidInput

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _load(tiny_config: Path, **engine: object) -> Editor:
    data = load_yaml(tiny_config)
    data["engine"] = {**data["engine"], **engine}
    return Editor.load(engine_config(data), edit_defaults(data))


@pytest.fixture(scope="module")
def editor(tiny_config: Path) -> Editor:
    return _load(tiny_config)


def _png(color: str = "orange") -> bytes:
    image = Image.new("RGB", (80, 60), color)
    image.paste(Image.new("RGB", (40, 30), "navy"), (5, 5))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _unet_untouched(editor: Editor, processors: dict) -> bool:
    unet = editor.diffusion.unet
    return all(processors[name] is processor for name, processor in unet.attn_processors.items()) and not any(
        parameter.requires_grad or parameter.grad is not None for parameter in unet.parameters()
    )


def test_a_batch_of_one_is_an_edit(editor: Editor) -> None:
    request = EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults, seed=4)
    (batched,) = editor.edit_many([request])
    single = editor.edit(request)
    assert np.array_equal(_pixels(batched.image), _pixels(single.image))
    assert (batched.caption, batched.before_captions, batched.after_captions) == (
        single.caption,
        single.before_captions,
        single.after_captions,
    )
    assert batched.counts == single.counts
    assert torch.equal(batched.inversion.latents, single.inversion.latents)


def test_edits_of_one_image_share_the_inversion_and_batch_the_guided_passes(editor: Editor) -> None:
    """Other instructions, seeds (language-model samples) and strengths: each result is its own
    edit up to rounding, on one inversion and one reconstruction."""
    steps = editor.defaults.steps
    processors = dict(editor.diffusion.unet.attn_processors)
    base = EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults, seed=4)
    requests = [
        base,
        replace(base, instruction="make it night", seed=9),
        replace(base, settings=editor.defaults.replace(direction_strength=2.0), seed=11),
    ]
    results = editor.edit_many(requests)
    assert _unet_untouched(editor, processors)
    alone = [editor.edit(replace(request, inversion=results[0].inversion)) for request in requests]

    counts = results[0].counts
    assert counts.unet_batch_samples == {"invert": steps, "reconstruct": steps, "edit": 4 * steps * 3}
    assert counts.unet_backwards == steps
    for result, expected in zip(results, alone, strict=True):
        assert result.inversion is results[0].inversion
        assert result.after_captions == expected.after_captions
        assert np.abs(_pixels(result.image) - _pixels(expected.image)).max() <= 2  # 8-bit rounding


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "navy"}, "same image"),
        ({"steps": 5}, "share steps"),
        ({"caption": "a cat"}, "caption override"),
    ],
)
def test_edits_made_together_must_share_what_is_shared(editor: Editor, change: dict, message: str) -> None:
    first = EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults)
    if "image" in change:
        other = replace(first, image=_png(change["image"]))
    elif "steps" in change:
        other = replace(first, settings=editor.defaults.replace(steps=change["steps"]))
    else:
        other = replace(first, caption=change["caption"])
    with pytest.raises(InvalidInput, match=message):
        editor.edit_many([first, other])
    with pytest.raises(InvalidInput, match="No edit"):
        editor.edit_many([])


def test_cancel_stops_a_batch_within_one_step(editor: Editor) -> None:
    processors = dict(editor.diffusion.unet.attn_processors)
    cancel = threading.Event()
    after_cancel: list[tuple[str, int]] = []

    def on_step(stage: str, step: int, total: int) -> None:
        if cancel.is_set():
            after_cancel.append((stage, step))
        if (stage, step) == ("edit", 1):
            cancel.set()

    request = EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults)
    with pytest.raises(EditCancelled):
        editor.edit_many([request, replace(request, seed=3)], callback=on_step, cancel=cancel)
    assert after_cancel == []
    assert _unet_untouched(editor, processors)


def test_offload_keeps_the_captioner_and_the_language_model_off_the_device_between_their_stages(
    tiny_config: Path, editor: Editor
) -> None:
    """On the CPU the moves are to and from the same device, so the moves themselves are watched:
    each model goes to the compute device for its stage and back to host memory after it."""
    offloaded = _load(tiny_config, offload="model")
    moves: list[tuple[str, str]] = []
    models = {"captioner": offloaded.captioner.model, "lm": offloaded.caption_writer.generate_text.model}
    for name, module in models.items():
        to = module.to
        module.to = lambda device, _to=to, _name=name: moves.append((_name, str(device))) or _to(device)
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    request = EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults, seed=2)
    result = offloaded.edit(request, callback=lambda stage, *_: stages.append((stage, list(moves))))

    assert moves == [("captioner", "cpu"), ("captioner", "cpu"), ("lm", "cpu"), ("lm", "cpu")]
    during_unet = [seen for stage, seen in stages if stage in ("invert", "edit")]
    assert all(len(seen) % 2 == 0 for seen in during_unet)  # every visit to the device has ended
    assert np.array_equal(_pixels(result.image), _pixels(editor.edit(request).image))


def test_engine_options_are_checked(tiny_config: Path) -> None:
    data = load_yaml(tiny_config)
    assert engine_config(data).compile is False
    assert engine_config(data).offload == "none"
    data["engine"] = {**data["engine"], "offload": "sequential"}
    with pytest.raises(ConfigError, match="offload must be none or model"):
        engine_config(data)
    data["engine"] = {**data["engine"], "offload": "model", "compile": "yes"}
    with pytest.raises(ConfigError, match="compile"):
        engine_config(data)
