"""The paper preset and its evaluation strategies, and what an edit tells its user about captions:
the fallback, shortened captions, the paper's oracle and an edit that would change nothing."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editor.config import EngineConfig, edit_defaults, engine_config, load_yaml
from editor.engine import Editor
from editor.types import EditRequest, EditSettings, InvalidInput
from evaluation.dataset import ImageRef, Turn
from evaluation.strategies import PAPER_EDIT_SETTINGS, MissingDescription, resolve_strategies
from sessions.config import EvaluationConfig, load_config

PRESET = Path(__file__).parents[1] / "presets" / "paper.yaml"
DEFAULT_CONFIG = Path(__file__).parents[1] / "config.yaml"

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_the_paper_preset_holds_the_paper_codes_settings() -> None:
    data = load_yaml(PRESET)
    assert load_config(PRESET).evaluation.seed == 42  # every section of the preset is valid
    engine = engine_config(data)
    assert engine.captioner.prompt == "a picture of "
    assert (engine.captioner.num_beams, engine.captioner.max_length, engine.captioner.min_length) == (
        3,
        30,
        10,
    )
    assert (engine.inversion.schedule, engine.inversion.roll) == ("pix2pix_zero", "pix2pix_zero")
    lm = engine.language_model
    assert (lm.do_sample, lm.temperature, lm.top_p, lm.max_attempts) == (True, 1.0, 1.0, 10)
    assert edit_defaults(data) == EditSettings(**PAPER_EDIT_SETTINGS)


def test_the_default_preset_differs_only_where_docs_say_so() -> None:
    """The default keeps pix2pix-zero's 50 steps / 0.1, N=5 few-shot and diffusers' inverse
    scheduler (docs/DIVERGENCES.md says why); BLIP decoding and the roll rule are the paper's."""
    default, paper = engine_config(load_yaml(DEFAULT_CONFIG)), engine_config(load_yaml(PRESET))
    assert default.captioner == paper.captioner
    assert default.inversion == dataclasses.replace(paper.inversion, schedule="diffusers")
    assert (default.inversion.roll, default.inversion.schedule) == ("pix2pix_zero", "diffusers")
    changed = {
        name
        for name, value in edit_defaults(load_yaml(DEFAULT_CONFIG)).to_dict().items()
        if PAPER_EDIT_SETTINGS.get(name, value) != value
    }
    assert changed == {"steps", "cross_attention_guidance", "num_captions", "template"}
    assert EngineConfig() == dataclasses.replace(default, base_dir=".")


@pytest.mark.parametrize("config", [DEFAULT_CONFIG, PRESET])
def test_the_paper_strategies_edit_with_the_presets_settings_from_any_config(config: Path) -> None:
    strategies = resolve_strategies(
        EvaluationConfig(), edit_defaults(load_yaml(config)), ["paper", "paper_oracle"]
    )
    assert [s.settings for s in strategies] == [edit_defaults(load_yaml(PRESET))] * 2
    assert [s.oracle for s in strategies] == ["none", "output"]


def _turn(**descriptions: str | None) -> Turn:
    image = ImageRef(Path("unused.png"))
    return Turn("s1", 1, "make it snow", image, image, image, **descriptions)


def test_the_paper_oracle_is_the_blip_caption_then_the_outputs_description() -> None:
    (oracle,) = resolve_strategies(EvaluationConfig(), EditSettings(), ["paper_oracle"])
    turn = _turn(source_description="a road in summer", target_description="a road in snow")
    assert oracle.captions_for(turn) == ((), ("a road in snow",))
    with pytest.raises(MissingDescription, match="paper_oracle"):
        oracle.captions_for(_turn(source_description="a road in summer"))


# --- what an edit says about its captions, on the tiny models --------------------------------------


@pytest.fixture(scope="module")
def editor(tiny_config: Path) -> Editor:
    data = load_yaml(tiny_config)
    return Editor.load(engine_config(data), edit_defaults(data))


def _png(color: str = "orange") -> bytes:
    image = Image.new("RGB", (64, 48), color)
    image.paste(Image.new("RGB", (20, 20), "navy"), (8, 8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_empty_before_list_is_the_image_caption(editor: Editor) -> None:
    request = EditRequest(
        image=_png(), instruction="add snow", settings=editor.defaults, captions=((), ("snow",))
    )
    result = editor.edit(request)
    assert result.before_captions == (result.caption,)
    assert result.after_captions == ("snow",)
    assert result.counts.lm_generate_calls == 0


def test_the_fallback_is_on_the_result_for_the_transports(editor: Editor) -> None:
    """The tiny Phi writes noise: every attempt fails, the result says so in words."""
    result = editor.edit(EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults))
    assert result.used_fallback_captions
    assert result.counts.lm_generate_calls == editor.config.language_model.max_attempts
    assert any("fallback" in note for note in result.notes)
    assert result.after_captions == (f"{result.before_captions[0]}, add a hat",)


def test_a_long_caption_is_shortened_and_the_user_told(editor: Editor) -> None:
    caption = "a cat sitting on the red table with a dog " * 4
    request = EditRequest(
        image=_png(),
        instruction="add a hat",
        settings=editor.defaults,
        caption=caption,
        captions=((), ("a hat",)),
    )
    result = editor.edit(request)
    assert caption.startswith(result.caption)
    assert editor.token_limit.count(result.caption) <= editor.token_limit.limit
    assert any("shortened" in note and result.caption in note for note in result.notes)


def test_captions_equal_within_the_limit_are_refused_before_any_unet_runs(editor: Editor) -> None:
    base = "a cat sitting on the red table " * 4
    request = EditRequest(
        image=_png(),
        instruction="make it winter",
        settings=editor.defaults,
        captions=((base + "in summer",), (base + "in winter",)),
    )
    stages: list[str] = []
    with pytest.raises(InvalidInput, match="same within the text encoder"):
        editor.edit(request, callback=lambda stage, *_: stages.append(stage))
    assert "edit" not in stages


def test_the_tiny_demo_shows_edits_that_differ(editor: Editor) -> None:
    """Captions fit CLIP, so two instructions and a stronger variant give three different images."""
    first = editor.edit(EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults, seed=1))
    assert not any("shortened" in note for note in first.notes)
    other = editor.edit(
        EditRequest(image=_png(), instruction="make it night", settings=editor.defaults, seed=1)
    )
    stronger = editor.edit(
        EditRequest(image=_png(), instruction="add a hat", settings=editor.defaults.scaled(1.5), seed=1)
    )
    images = [np.asarray(result.image, dtype=np.int16) for result in (first, other, stronger)]
    assert np.abs(images[0] - images[1]).max() > 0
    assert np.abs(images[0] - images[2]).max() > 0
