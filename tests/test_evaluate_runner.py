"""Both protocols, resumption and the reports, with a fake editor at the engine's edge.

The fake "edits" by inverting the colours of its input, so every score below follows by
hand from the synthetic dataset's colours (see ``tests/test_evaluate_data.py``); CLIP and
DINO are the real tiny models.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from editor.types import EditCounts, EditRequest, EditResult, EditSettings, InvalidInput, Inversion
from evaluation.dataset import load_dataset
from evaluation.metrics import Scorer
from evaluation.report import summarise, write_reports
from evaluation.runner import Evaluation, RunDirConflict, RunLog, TurnRow, prepare_run_dir
from evaluation.strategies import resolve_strategies
from sessions.config import EvaluationConfig, StrategyConfig
from tests.test_evaluate_data import (
    global_description,
    local_description,
    write_folder_dataset,
    write_parquet_dataset,
)

#: L1 of each turn, by hand: the fake turns input colour c into 255 - c.
SINGLE_L1 = {("101", 1): 0.0, ("202", 1): 2 / 3, ("202", 2): 1 / 3, ("202", 3): 1 / 3}
SINGLE_L1 |= {("303", 1): 128 / 255, ("303", 2): 0.0}
MULTI_FINAL_L1 = {"101": 0.0, "202": 2 / 3, "303": 128 / 255}


class Interrupted(Exception):
    """Stands for the process being killed in the middle of a run."""


class InvertingEditor:
    """Inverts the input's colours; records every request; can fail like the real engine."""

    template_names = ("few_shot", "zero_shot")

    def __init__(self, stop_after: int | None = None, refuse: tuple[str, ...] = ()) -> None:
        self.stop_after = stop_after
        self.refuse = refuse
        self.requests: list[EditRequest] = []

    def edit(self, request: EditRequest, *, callback: object = None, cancel: object = None) -> EditResult:
        if self.stop_after is not None and len(self.requests) >= self.stop_after:
            raise Interrupted
        self.requests.append(request)
        if request.instruction in self.refuse:
            raise InvalidInput("That instruction cannot be carried out.")
        source = Image.open(io.BytesIO(request.image)).convert("RGB")
        return EditResult(
            image=ImageOps.invert(source),
            caption="a square",
            before_captions=("a square",),
            after_captions=("an inverted square",),
            inversion=Inversion(latents=torch.zeros(1), caption="a square", key="fake"),
            timings={"edit": 0.5},
            counts=EditCounts(unet_forwards={"edit": 4}),
        )


@pytest.fixture(scope="module")
def scorer(tiny_models_dir: Path) -> Scorer:
    torch.set_num_threads(1)
    return Scorer.from_pretrained(
        str(tiny_models_dir / "tiny" / "clip-vit"), str(tiny_models_dir / "tiny" / "dino-vit"), "cpu"
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "data")


def evaluate(
    run_dir: Path,
    data_dir: Path,
    editor: InvertingEditor,
    scorer: Scorer,
    protocol: str,
    *,
    names: tuple[str, ...] = ("few_shot",),
    config: EvaluationConfig | None = None,
) -> Evaluation:
    strategies = resolve_strategies(config or EvaluationConfig(), EditSettings(steps=4), names)
    prepare_run_dir(run_dir, {"seed": 42}, strategies)
    evaluation = Evaluation(editor, scorer, load_dataset(data_dir), run_dir, seed=42)
    evaluation.run(protocol, strategies)
    return evaluation


def edited(editor: InvertingEditor) -> list[str]:
    return [request.instruction for request in editor.requests]


def comparable(rows: dict) -> dict:
    """Rows without wall time, which may differ between two runs."""
    return {key: {**row.to_dict(), "seconds": 0} for key, row in rows.items()}


def test_single_turn_edits_every_turn_from_its_ground_truth_input(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    editor = InvertingEditor()
    evaluation = evaluate(tmp_path / "run", data_dir, editor, scorer, "single")

    rows = evaluation.log.rows
    assert len(editor.requests) == len(rows) == 6
    for (_, protocol, session, turn), row in rows.items():
        assert protocol == "single"
        assert row.l1 == pytest.approx(SINGLE_L1[(session, turn)], abs=1e-9)
        assert (tmp_path / "run" / row.image).is_file()
    assert rows[("few_shot", "single", "202", 2)].image == "images/few_shot/202/202_inde_2.png"
    red_to_green = rows[("few_shot", "single", "202", 2)]
    expected = scorer.score(
        Image.new("RGB", (64, 64), (0, 255, 255)),
        Image.new("RGB", (64, 64), (0, 255, 0)),
        local_description("202", 2),
    )
    assert (red_to_green.clip_i, red_to_green.dino, red_to_green.clip_t) == pytest.approx(
        (expected.clip_i, expected.dino, expected.clip_t)
    )
    assert rows[("few_shot", "single", "202", 1)].image == "images/few_shot/202/202_1.png"


def test_multi_turn_chains_each_turn_on_the_previous_output(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    editor = InvertingEditor()
    evaluation = evaluate(tmp_path / "run", data_dir, editor, scorer, "multi")

    saved_turn_1 = (tmp_path / "run" / "images" / "few_shot" / "202" / "202_1.png").read_bytes()
    turn_2_request = next(r for r in editor.requests if r.instruction == "now make it green")
    assert turn_2_request.image == saved_turn_1
    finals = {row.session: row for row in evaluation.log.rows.values() if row.last_turn}
    assert {session: row.l1 for session, row in finals.items()} == pytest.approx(MULTI_FINAL_L1, abs=1e-9)
    assert finals["202"].image == "images/few_shot/202/202_iter_3.png"


def test_summary_averages_all_turns_single_and_final_turns_multi(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    evaluate(tmp_path / "run", data_dir, InvertingEditor(), scorer, "single")
    evaluation = evaluate(tmp_path / "run", data_dir, InvertingEditor(), scorer, "multi")

    summary = summarise(evaluation.log.rows.values())

    single, multi = summary["single"]["few_shot"], summary["multi"]["few_shot"]
    assert single["count"] == 6
    assert single["metrics"]["l1"] == pytest.approx(sum(SINGLE_L1.values()) / 6)
    assert multi["count"] == 3
    assert multi["metrics"]["l1"] == pytest.approx(sum(MULTI_FINAL_L1.values()) / 3)
    assert multi["by_turn"]["3"]["count"] == 1
    assert multi["by_turn"]["3"]["metrics"]["l1"] == pytest.approx(2 / 3)
    assert single["metric_counts"]["clip_t"] == 6
    assert 0 < single["metrics"]["clip_i"] <= 1


def test_the_first_turn_is_edited_once_for_both_protocols(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    evaluate(tmp_path / "run", data_dir, InvertingEditor(), scorer, "single")
    editor = InvertingEditor()
    evaluation = evaluate(tmp_path / "run", data_dir, editor, scorer, "multi")

    assert edited(editor) == ["now make it green", "turn it blue", "darken it again"]
    shared = evaluation.log.get("few_shot", "multi", "101", 1)
    assert shared is not None
    assert shared.protocol == "multi"
    assert shared.l1 == evaluation.log.get("few_shot", "single", "101", 1).l1


def test_an_interrupted_single_turn_run_resumes_with_only_the_remaining_turns(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    clean = evaluate(tmp_path / "clean", data_dir, InvertingEditor(), scorer, "single")
    first = InvertingEditor(stop_after=3)
    with pytest.raises(Interrupted):
        evaluate(tmp_path / "resumed", data_dir, first, scorer, "single")
    second = InvertingEditor()
    resumed = evaluate(tmp_path / "resumed", data_dir, second, scorer, "single")

    assert edited(first) == ["make it black", "paint it red", "now make it green"]
    assert edited(second) == ["turn it blue", "brighten it", "darken it again"]
    assert comparable(resumed.log.rows) == comparable(clean.log.rows)
    assert summarise(resumed.log.rows.values()) == summarise(clean.log.rows.values())


def test_an_interrupted_multi_turn_session_resumes_from_its_saved_image(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    clean = evaluate(tmp_path / "clean", data_dir, InvertingEditor(), scorer, "multi")
    with pytest.raises(Interrupted):
        evaluate(tmp_path / "resumed", data_dir, InvertingEditor(stop_after=2), scorer, "multi")
    second = InvertingEditor()
    resumed = evaluate(tmp_path / "resumed", data_dir, second, scorer, "multi")

    assert edited(second) == ["now make it green", "turn it blue", "brighten it", "darken it again"]
    saved_turn_1 = (tmp_path / "resumed" / "images" / "few_shot" / "202" / "202_1.png").read_bytes()
    assert second.requests[0].image == saved_turn_1
    assert comparable(resumed.log.rows) == comparable(clean.log.rows)
    assert summarise(resumed.log.rows.values()) == summarise(clean.log.rows.values())


def test_a_half_written_row_is_dropped_and_only_its_turn_redone(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    evaluate(tmp_path / "run", data_dir, InvertingEditor(), scorer, "single")
    log_path = tmp_path / "run" / "turns.jsonl"
    lines = log_path.read_bytes().splitlines(keepends=True)
    log_path.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])

    editor = InvertingEditor()
    evaluation = evaluate(tmp_path / "run", data_dir, editor, scorer, "single")

    assert edited(editor) == ["darken it again"]
    assert len(RunLog(log_path).rows) == len(evaluation.log.rows) == 6
    assert all(json.loads(line) for line in log_path.read_text().splitlines())


def test_a_refused_turn_is_recorded_and_a_multi_turn_chain_stops_there(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    editor = InvertingEditor(refuse=("now make it green",))
    evaluation = evaluate(tmp_path / "run", data_dir, editor, scorer, "multi")

    refused = evaluation.log.get("few_shot", "multi", "202", 2)
    after = evaluation.log.get("few_shot", "multi", "202", 3)
    assert refused.error == "That instruction cannot be carried out."
    assert refused.l1 is None
    assert after.error == "not edited: turn 2 of this session failed"
    assert "turn it blue" not in edited(editor)
    multi = summarise(evaluation.log.rows.values())["multi"]["few_shot"]
    assert (multi["count"], multi["failed"]) == (2, 1)

    again = InvertingEditor()
    evaluate(tmp_path / "run", data_dir, again, scorer, "multi")
    assert again.requests == []


def test_the_oracle_passes_the_dataset_descriptions_instead_of_the_language_model(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    editor = InvertingEditor()
    evaluate(tmp_path / "run", data_dir, editor, scorer, "multi", names=("oracle", "few_shot"))

    by_strategy = {"oracle": [], "few_shot": []}
    for index, request in enumerate(editor.requests):
        by_strategy["oracle" if request.captions else "few_shot"].append((index, request))
    oracle_turn_2 = next(r for _, r in by_strategy["oracle"] if r.instruction == "now make it green")
    assert oracle_turn_2.captions == ((global_description("202", 1),), (global_description("202", 2),))
    assert len(by_strategy["oracle"]) == len(by_strategy["few_shot"]) == 6


def test_later_strategies_reuse_the_inversion_of_the_same_input(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    editor = InvertingEditor()
    evaluate(tmp_path / "run", data_dir, editor, scorer, "single", names=("few_shot", "zero_shot"))

    first, second = editor.requests[0], editor.requests[1]
    assert first.instruction == second.instruction == "make it black"
    assert (first.settings.template, second.settings.template) == ("few_shot", "zero_shot")
    assert first.inversion is None
    assert second.inversion is not None
    assert second.inversion.caption == "a square"


def test_a_strategy_changed_under_the_same_name_is_refused(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    evaluate(
        tmp_path / "run",
        data_dir,
        InvertingEditor(),
        scorer,
        "single",
        names=("mine",),
        config=EvaluationConfig(strategies={"mine": StrategyConfig({"num_captions": 2})}),
    )
    changed = EvaluationConfig(strategies={"mine": StrategyConfig({"num_captions": 3})})

    with pytest.raises(RunDirConflict, match="Strategy 'mine' has other settings"):
        evaluate(
            tmp_path / "run", data_dir, InvertingEditor(), scorer, "single", names=("mine",), config=changed
        )


def test_another_experiment_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    prepare_run_dir(tmp_path, {"seed": 42}, ())

    with pytest.raises(RunDirConflict, match="other engine settings or seed"):
        prepare_run_dir(tmp_path, {"seed": 7}, ())


def test_reports_hold_every_row_the_summary_the_tables_and_the_plots(
    tmp_path: Path, data_dir: Path, scorer: Scorer
) -> None:
    run_dir = tmp_path / "run"
    evaluate(run_dir, data_dir, InvertingEditor(), scorer, "single")
    evaluation = evaluate(run_dir, data_dir, InvertingEditor(), scorer, "multi")

    document = write_reports(run_dir, evaluation.log.rows.values())

    csv_lines = (run_dir / "turns.csv").read_text().splitlines()
    assert csv_lines[0].startswith("strategy,protocol,session,turn,last_turn")
    assert len(csv_lines) == 1 + 12
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == json.loads(json.dumps(document))
    assert saved["protocols"]["multi"]["few_shot"]["count"] == 3
    assert saved["strategies"]["few_shot"]["settings"]["template"] == "few_shot"
    table = (run_dir / "results.md").read_text()
    assert "| single-turn (all turns) | few_shot | 6 | 0 |" in table
    assert "published, different harness — not directly comparable" in table.lower()
    assert (
        "| InstructPix2Pix | single-turn (all turns) | 0.1122 | 0.0371 | 0.8524 | 0.7428 | 0.2764 |" in table
    )
    for plot in ("metrics.png", "multi_turn.png"):
        with Image.open(run_dir / plot) as image:
            assert image.format == "PNG"


def test_the_hub_layout_is_scored_without_clip_t(tmp_path: Path, scorer: Scorer) -> None:
    data_dir = write_parquet_dataset(tmp_path / "hub")
    evaluation = evaluate(tmp_path / "run", data_dir, InvertingEditor(), scorer, "single")

    document = write_reports(tmp_path / "run", evaluation.log.rows.values())

    stats = document["protocols"]["single"]["few_shot"]
    assert stats["metrics"]["l1"] == pytest.approx(sum(SINGLE_L1.values()) / 6)
    assert (stats["metrics"]["clip_t"], stats["metric_counts"]["clip_t"]) == (None, 0)
    assert stats["metric_counts"]["dino"] == 6
    assert "| single-turn (all turns) | few_shot | 6 | 0 |" in (tmp_path / "run" / "results.md").read_text()
    assert "| n/a |" in (tmp_path / "run" / "results.md").read_text()


def test_row_round_trips_through_json() -> None:
    row = TurnRow("s", "multi", "7", 2, True, "do it", before=("a", "b"), after=("c",), clip_t=None, l1=0.5)

    assert TurnRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row
