"""``python bot.py --check``: the verdict an admin reads before starting the bot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.discord.bot_process import write_bot_config

ROOT = Path(__file__).resolve().parents[1]


def _check(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    environment |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "bot.py", "--check", "--config", str(config)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_check_loads_the_models_and_says_which_transport_would_start(tiny_config: Path) -> None:
    done = _check(tiny_config, DISCORD_TOKEN="secret-token-value")
    assert done.returncode == 0, done.stderr
    assert "OK:" in done.stdout
    assert "models loaded on cpu (float32)" in done.stdout
    assert "DISCORD_TOKEN is set" in done.stdout
    assert "secret-token-value" not in done.stdout + done.stderr


def test_check_names_the_wrong_key(tmp_path: Path, tiny_config: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(tiny_config.read_text() + "worker:\n  max_qeue: 3\n")
    done = _check(config)
    assert done.returncode == 2
    assert "worker: unknown key(s) max_qeue" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_refuses_an_unknown_section(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("engine: {}\ndiscrod: {}\n")
    done = _check(config)
    assert done.returncode == 2
    assert "unknown section(s) discrod" in done.stderr


def _with(tiny_config: Path, tmp_path: Path, extra: str) -> Path:
    """The tiny config (its model paths made absolute) plus ``extra`` sections, in ``tmp_path``."""
    data = yaml.safe_load(tiny_config.read_text())
    models = data["engine"]["models"]
    models |= {name: str(tiny_config.parent / folder) for name, folder in models.items()}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data) + extra)
    return config


def test_check_names_a_missing_model_folder_in_one_line(tmp_path: Path, tiny_config: Path) -> None:
    config = _with(tiny_config, tmp_path, "")
    config.write_text(
        config.read_text().replace(str(tiny_config.parent / "tiny" / "phi"), "./models/phi-missing")
    )
    done = _check(config)
    assert done.returncode == 2
    assert f"the model folder {tmp_path}/models/phi-missing does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_reports_an_unknown_template_before_loading_models(tmp_path: Path, tiny_config: Path) -> None:
    done = _check(_with(tiny_config, tmp_path, "edit:\n  template: fewshot\n"))
    assert done.returncode == 2
    assert "Unknown prompt template 'fewshot'; known: few_shot, zero_shot." in done.stderr
    assert "models loaded" not in done.stderr


def test_check_reports_a_database_path_that_cannot_work_in_one_line(
    tmp_path: Path, tiny_config: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    done = _check(_with(tiny_config, tmp_path, f"storage:\n  database: {tmp_path}/a-file/bot.db\n"))
    assert done.returncode == 1
    assert (
        f"Cannot start: cannot open the database {tmp_path}/a-file/bot.db: {tmp_path}/a-file is a file"
        in done.stderr
    )
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_check_with_ray_says_how_many_replicas_are_up_and_where(tmp_path: Path, tiny_config: Path) -> None:
    sections = {"worker": {"backend": "ray", "ray": {"replicas": 2, "gpus_per_replica": 0}}}
    config = write_bot_config(tiny_config, tmp_path / "bot.db", sections)
    # Without an address the bot starts its own Ray, on 127.0.0.1 only; no token file in $HOME.
    done = _check(config, RAY_AUTH_MODE="disabled")
    assert done.returncode == 0, done.stderr
    assert "2 of 2 editor replicas up on Ray (float32): replica 0 on 127.0.0.1 (CPU, pid" in done.stdout
    assert "replica 1 on 127.0.0.1 (CPU, pid" in done.stdout
