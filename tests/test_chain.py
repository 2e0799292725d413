"""Chain mode ``compose``: tiny-model engine checks, the service's turns, the evaluation strategy.

A composed turn edits the conversation's first image with the sum of its lineage's
directions, from that image's cached inversion: no inversion after the first turn, and a
result that depends on every earlier turn's captions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from editor.config import ConfigError, edit_defaults, engine_config, load_yaml
from editor.engine import Editor
from editor.types import EditRequest, EditSettings, PriorEdit
from evaluation.dataset import load_dataset
from evaluation.metrics import Scorer
from evaluation.strategies import resolve_strategies
from sessions import App, Author, Place, Ticket
from sessions.config import EvaluationConfig, StrategyConfig
from tests.support.editor import StandInEditor, stand_in_app
from tests.test_evaluate_data import write_folder_dataset
from tests.test_evaluate_runner import InvertingEditor, evaluate
from tests.test_service import picture

ANN = Author("1", "Ann")
PLACE = Place("discord", 10, 20)


async def finished(ticket: Awaitable[Ticket[Any]]) -> Any:
    """What a request makes, once it is queued and done."""
    return await (await ticket).result()


HAT = PriorEdit(("a photo of a square",), ("a photo of a square with a hat",), 1.0)
NIGHT = PriorEdit(("a photo of a square",), ("a photo of a square at night",), 0.8)


@pytest.fixture(scope="module")
def editor(tiny_config: Path, single_torch_thread: None) -> Editor:
    data = load_yaml(tiny_config)
    return Editor.load(engine_config(data), replace(edit_defaults(data), steps=4))


def pixels(editor: Editor, request: EditRequest) -> np.ndarray:
    return np.asarray(editor.edit(request).image, dtype=np.int16)


def test_a_composed_turn_inverts_nothing_and_depends_on_every_earlier_direction(editor: Editor) -> None:
    first = editor.edit(
        EditRequest(
            image=picture(),
            instruction="add a hat",
            settings=editor.defaults,
            seed=3,
            captions=(HAT.before, HAT.after),
        )
    )
    assert first.counts.unet_forwards.get("invert", 0) > 0
    turn = EditRequest(
        image=picture(),
        instruction="in snow",
        settings=editor.defaults,
        seed=5,
        inversion=first.inversion,
        captions=(("a photo of a square",), ("a photo of a square in snow",)),
        prior=(HAT, NIGHT),
    )
    composed = editor.edit(turn)
    assert composed.counts.unet_forwards.get("invert", 0) == 0, "no inversion after the first turn"
    assert composed.counts.lm_generate_calls == 0
    base = np.asarray(composed.image, dtype=np.int16)
    for changed in (
        (replace(HAT, after=("a photo of a square with a crown",)), NIGHT),
        (HAT, replace(NIGHT, after=("a photo of a square at dawn",))),
        (HAT, replace(NIGHT, strength=0.1)),
        (HAT,),
    ):
        assert not np.array_equal(pixels(editor, replace(turn, prior=changed)), base), changed


@pytest.fixture(scope="module")
def scorer(tiny_models_dir: Path) -> Scorer:
    return Scorer.from_pretrained(
        str(tiny_models_dir / "tiny" / "clip-vit"), str(tiny_models_dir / "tiny" / "dino-vit"), "cpu"
    )


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, StandInEditor]]:
    editor = StandInEditor()
    app = stand_in_app(tmp_path / "bot.db", editor)
    await app.service.start()
    yield app, editor
    await app.service.stop()
    app.close()


async def test_compose_turns_reuse_the_originals_inversion_reinvert_turns_do_not(
    app: tuple[App, StandInEditor],
) -> None:
    bot, editor = app
    service = bot.service
    await service.update_channel_policy(PLACE, chain="compose")
    first = await finished(service.start_edit(PLACE, ANN, picture(), "add a hat"))
    assert editor.inversions == 1
    second = await finished(service.continue_edit(first.id, ANN, "at night", place=PLACE))
    third = await finished(service.continue_edit(second.id, ANN, "in snow", place=PLACE))
    retried = await finished(service.retry(third.id, ANN, place=PLACE))
    assert editor.inversions == 1, "compose: no inversion after the first turn"
    assert [len(prior) for prior in editor.priors] == [0, 1, 2, 2]
    assert editor.priors[2] == (
        PriorEdit(first.before_captions, first.after_captions, 1.0),
        PriorEdit(second.before_captions, second.after_captions, 1.0),
    )
    assert retried.parent_id == second.id
    assert bot.store.inversions.size() > 0
    assert {row[0] for row in bot.store.db.execute("SELECT version_id FROM inversions")} == {first.parent_id}

    await service.update_channel_policy(PLACE, chain="reinvert")
    await finished(service.continue_edit(third.id, ANN, "in watercolor", place=PLACE))
    assert editor.inversions == 2, "reinvert: the previous result is inverted"
    assert editor.priors[-1] == ()


def test_the_compose_strategy_edits_the_first_input_with_the_earlier_turns(
    tmp_path: Path, scorer: Scorer
) -> None:
    data_dir = write_folder_dataset(tmp_path / "data")
    editor = InvertingEditor()
    evaluate(tmp_path / "run", data_dir, editor, scorer, "multi", names=("compose",))
    session = next(s for s in load_dataset(data_dir).sessions if s.id == "202")
    first_input = session.turns[0].source.read_bytes()
    requests = [r for r in editor.requests if r.image == first_input]
    assert [len(r.prior) for r in requests] == [0, 1, 2]
    assert requests[2].prior[0] == PriorEdit(("a square",), ("an inverted square",), 1.0)


def test_a_strategy_with_an_unknown_chain_mode_is_a_config_error() -> None:
    config = EvaluationConfig(strategies={"sideways": StrategyConfig(chain="sideways")})
    with pytest.raises(ConfigError, match="chain must be one of reinvert, compose"):
        resolve_strategies(config, EditSettings(), ["sideways"])
