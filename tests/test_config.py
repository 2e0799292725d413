"""One AppConfig for every section: read once, every section checked, paths anchored at the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from editor.config import EngineConfig
from editor.types import EditSettings
from editor.worker import WorkerConfig
from sessions import AppConfig, ConfigError, DiscordConfig, OpsConfig, StorageConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_config_parses_into_every_section() -> None:
    config = load_config(REPO / "config.yaml")
    assert config.path == REPO / "config.yaml"
    assert config.worker == WorkerConfig()
    assert config.ops == OpsConfig()
    assert config.edit == EditSettings()
    assert config.engine.models == EngineConfig().models
    assert config.storage.database_path == REPO / "var" / "bot.db"
    assert "few_shot_n3" in config.evaluation.strategies


def test_an_empty_mapping_gives_the_documented_defaults(tmp_path: Path) -> None:
    config = AppConfig.from_mapping({}, tmp_path)
    assert config.discord == DiscordConfig()
    assert config.storage.database_path == tmp_path / "var" / "bot.db"
    assert config.engine.base_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"discrod": {}}, "unknown section(s) discrod"),
        ({"worker": {"max_qeue": 3}}, "worker: unknown key(s) max_qeue"),
        ({"worker": {"max_queue": 0}}, "worker: max_queue must be at least 1"),
        ({"edit": {"steps": 0}}, "edit: Setting `steps` must be between"),
        ({"storage": {"busy_timeout_s": 0}}, "storage: busy_timeout_s must be positive"),
        ({"discord": {"blocked_patterns": ["("]}}, "discord: blocked pattern '('"),
        ({"ops": []}, "ops: expected a mapping"),
        ({"storage": "var/x.db"}, "storage: expected a mapping"),
    ],
)
def test_a_wrong_value_is_named_with_its_section(data: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        AppConfig.from_mapping(data, tmp_path)
    assert message in str(raised.value)


def test_transport_ids_written_as_numbers_are_text(tmp_path: Path) -> None:
    config = AppConfig.from_mapping({"discord": {"edit_channels": [123], "command_guilds": ["45"]}}, tmp_path)
    assert config.discord.edit_channels == ("123",)
    assert config.discord.command_guilds == ("45",)


def test_an_empty_safety_model_means_none_not_the_config_folder(tmp_path: Path) -> None:
    assert AppConfig.from_mapping({"discord": {"safety_model": ""}}, tmp_path).discord.safety_model == ""
    (tmp_path / "checker").mkdir()
    local = AppConfig.from_mapping({"discord": {"safety_model": "checker"}}, tmp_path)
    assert local.discord.safety_model == str(tmp_path / "checker")


def test_relative_storage_paths_start_at_the_config_file(tmp_path: Path) -> None:
    file = tmp_path / "conf" / "config.yaml"
    file.parent.mkdir()
    file.write_text("storage:\n  database: db/bot.db\n  outputs: /abs/out\n")
    storage: StorageConfig = load_config(file).storage
    assert storage.database_path == file.parent / "db" / "bot.db"
    assert storage.outputs_path == Path("/abs/out")


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
