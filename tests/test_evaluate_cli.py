"""``python -m evaluation`` end to end on the tiny models, its answers to bad input, and ``tiny-models``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from evaluation.__main__ import main
from evaluation.strategies import available_strategies, resolve_strategies
from sessions.config import load_config
from tests.test_evaluate_data import global_description, write_folder_dataset, write_parquet_dataset

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "magicbrush")


@pytest.fixture(scope="module")
def quick_config(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models with the fewest steps and LM tokens that still run every stage."""
    data = yaml.safe_load(tiny_config.read_text())
    models = data["engine"]["models"]
    for name, folder in models.items():
        models[name] = str(tiny_config.parent / folder)
    for name in ("clip", "dino"):
        data["evaluation"][name] = str(tiny_config.parent / data["evaluation"][name])
    data["engine"]["language_model"].update(caption_tokens=2, max_attempts=1)
    data["edit"]["steps"] = 2
    path = tmp_path_factory.mktemp("evaluate-config") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_both_protocols_run_end_to_end_into_one_folder(
    tmp_path: Path, quick_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder_dataset(tmp_path / "magicbrush", only=("303",))
    run_dir = tmp_path / "run"
    common = ["--data", str(data), "--out", str(run_dir), "--config", str(quick_config)]

    assert main([*common, "--protocol", "single", "multi", "--strategy", "default", "oracle"]) == 0

    summary = json.loads((run_dir / "summary.json").read_text())["protocols"]
    assert summary["single"]["default"]["count"] == 2
    assert summary["single"]["oracle"]["count"] == 2
    assert summary["multi"]["default"]["count"] == 1
    assert summary["multi"]["oracle"]["count"] == 1
    for stats in (summary["single"]["default"], summary["multi"]["default"]):
        assert stats["failed"] == 0
        assert all(value is not None for value in stats["metrics"].values())
        assert 0 <= stats["metrics"]["l1"] <= 1
    rows = [json.loads(line) for line in (run_dir / "turns.jsonl").read_text().splitlines()]
    assert [(row["strategy"], row["protocol"], row["turn"]) for row in rows] == [
        ("default", "single", 1),
        ("default", "single", 2),
        ("oracle", "single", 1),
        ("oracle", "single", 2),
        ("default", "multi", 1),
        ("default", "multi", 2),
        ("oracle", "multi", 1),
        ("oracle", "multi", 2),
    ]
    for row in rows:
        with Image.open(run_dir / row["image"]) as image:
            assert image.size == (64, 64)
    oracle_turn_2 = rows[3]
    assert oracle_turn_2["before"] == [global_description("303", 1)]
    assert oracle_turn_2["after"] == [global_description("303", 2)]
    assert rows[5]["image"] == "images/default/303/303_iter_2.png"
    assert (run_dir / "multi_turn.png").is_file()
    assert "| multi-turn (final turn) | default | 1 | 0 |" in capsys.readouterr().out


def _main_on_shipped_config(data: Path, protocol: str, out: Path, *arguments: str) -> int:
    """``main`` with the repository's config.yaml: its real models are never loaded in these tests."""
    required = ["--data", str(data), "--protocol", protocol, "--out", str(out)]
    return main([*required, *arguments, "--config", str(REPO_CONFIG)])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--strategy", "few_shots"], "Unknown strategy 'few_shots'; known: compose, default, few_shot"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_choices_are_explained_before_any_model_loads(
    tmp_path: Path, folder_data: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _main_on_shipped_config(folder_data, "single", tmp_path / "run", *arguments)

    assert code == 2
    assert message in capsys.readouterr().err


def test_the_oracle_on_the_hub_layout_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_parquet_dataset(tmp_path / "hub")

    code = _main_on_shipped_config(data, "multi", tmp_path / "run", "--strategy", "oracle")

    assert code == 2
    assert (
        "needs the dataset's global descriptions, which the parquet layout lacks" in capsys.readouterr().err
    )


def test_a_missing_data_folder_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _main_on_shipped_config(tmp_path / "absent", "single", tmp_path / "run")

    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_required_arguments_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", "somewhere"])

    assert exit_info.value.code == 2
    assert "the following arguments are required: --protocol, --out" in capsys.readouterr().err


def test_list_strategies_prints_built_ins_and_the_config_s_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-strategies", "--config", str(REPO_CONFIG)]) == 0

    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"default", "few_shot", "zero_shot", "few_shot_unlocked", "oracle", "few_shot_n3"} <= set(listed)


def test_every_strategy_of_the_shipped_config_resolves() -> None:
    app = load_config(REPO_CONFIG)
    config = app.evaluation

    strategies = resolve_strategies(config, app.edit, list(available_strategies(config)))

    assert config.clip == "openai/clip-vit-base-patch32"
    assert config.dino == "facebook/dino-vits16"
    assert {s.settings.template for s in strategies} == {"few_shot", "zero_shot"}


def test_tiny_models_write_one_config_for_the_engine_and_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tiny-models", str(tmp_path / "models")]) == 0

    config = load_config(tmp_path / "models" / "config.yaml")
    for path in (
        config.engine.model_path("diffusion"),
        config.evaluation.model_path("clip"),
        config.evaluation.model_path("dino"),
    ):
        assert Path(path).is_dir()
    assert "config.yaml written" in capsys.readouterr().out
