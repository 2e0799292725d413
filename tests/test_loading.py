"""Loading the models explains itself: no hub, a missing folder, a bad template, a broken download."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from editor.config import ConfigError, EngineConfig, ModelsConfig, edit_defaults, engine_config, load_yaml
from editor.engine import Editor
from editor.loading import ModelUnavailable, model_source
from editor.types import EditSettings

BLIP = ModelsConfig().captioner  # the default hub id of the captioner


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model cache with nothing downloaded, whatever this machine's cache holds."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """Hub look-ups allowed, but the hub is a closed port on this machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    return endpoint


def _load_defaults(base_dir: Path) -> None:
    Editor.load(EngineConfig(device="cpu", base_dir=str(base_dir)), EditSettings())


def test_offline_without_the_model_fails_in_seconds_naming_it(tmp_path: Path, empty_cache: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as raised:
        _load_defaults(tmp_path)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert f"engine.models.captioner: {BLIP} is not in the local model cache" in message
    assert "HF_HUB_OFFLINE" in message
    assert f"hf download {BLIP}" in message
    assert "make tiny" in message


def test_an_unreachable_hub_fails_in_seconds_naming_the_model(
    tmp_path: Path, empty_cache: Path, unreachable_hub: str
) -> None:
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as raised:
        _load_defaults(tmp_path)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert f"engine.models.captioner: {BLIP} is not in the local model cache" in message
    assert f"the hub ({unreachable_hub}) cannot be reached (ConnectError" in message
    assert f"hf download {BLIP}" in message


def test_an_unreachable_hub_loads_a_cached_model_from_the_cache(
    tiny_models_dir: Path, empty_cache: Path, unreachable_hub: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A model downloaded earlier still loads without the hub, from its cached snapshot, with no retries."""
    tiny = load_yaml(tiny_models_dir / "config.yaml")["engine"]["models"]["captioner"]
    repo = Path(empty_cache) / "models--Salesforce--blip-image-captioning-base"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(tiny_models_dir / tiny, repo / "snapshots" / "0123abcd")
    with caplog.at_level(logging.WARNING, logger="editor.loading"):
        source = model_source("engine.models.captioner", BLIP, tiny_models_dir)
    assert source == str(repo / "snapshots" / "0123abcd")
    assert "cannot be reached" in caplog.text
    assert "from the local cache" in caplog.text


def test_a_missing_local_folder_is_reported_as_a_missing_folder(tiny_config: Path) -> None:
    data = load_yaml(tiny_config)
    engine = engine_config(data)
    models = dataclasses.replace(engine.models, language_model="./models/phi-missing")
    with pytest.raises(ModelUnavailable) as raised:
        Editor.load(dataclasses.replace(engine, models=models), edit_defaults(data))
    message = str(raised.value)
    folder = tiny_config.parent / "models" / "phi-missing"
    assert message.startswith(f"engine.models.language_model: the model folder {folder} does not exist")
    assert "Repo id" not in message


@pytest.mark.parametrize("name", ["/nowhere/at/all/sd", "../sd-v1", "var/tiny/sd"])
def test_a_name_that_can_only_be_a_folder_is_a_missing_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelUnavailable, match=r"the model folder .* does not exist"):
        model_source("engine.models.diffusion", name, tmp_path)


def test_a_name_that_may_be_either_mentions_the_folder_it_looked_for(
    tmp_path: Path, empty_cache: Path
) -> None:
    with pytest.raises(ModelUnavailable) as raised:
        model_source("engine.models.diffusion", "models/sd", tmp_path)
    assert f"models/sd is not in the local model cache (nor a folder {tmp_path}/models/sd)" in str(
        raised.value
    )


def test_an_unknown_template_is_reported_before_any_model_loads(tmp_path: Path) -> None:
    """The models named here do not exist: the template error coming first shows the order."""
    models = ModelsConfig(captioner="no/such/blip", language_model="no/such/phi", diffusion="no/such/sd")
    config = EngineConfig(models=models, base_dir=str(tmp_path))
    with pytest.raises(ConfigError) as raised:
        Editor.load(config, EditSettings(template="fewshot"))
    assert not isinstance(raised.value, ModelUnavailable)
    assert "edit: Unknown prompt template 'fewshot'; known: few_shot, zero_shot." in str(raised.value)


def test_a_template_folder_without_templates_is_reported_before_any_model_loads(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "mine.txt").write_text("Describe the change.\n")  # no {instruction}
    lm = dataclasses.replace(EngineConfig().language_model, templates_dir="prompts")
    config = EngineConfig(
        models=ModelsConfig(captioner="no/such/blip"), language_model=lm, base_dir=str(tmp_path)
    )
    with pytest.raises(ConfigError, match=r"templates_dir: prompt template 'mine' .* no \{instruction\}"):
        Editor.load(config, EditSettings(template="mine"))


def test_a_broken_model_folder_says_which_model_and_why(tmp_path: Path, tiny_config: Path) -> None:
    data = load_yaml(tiny_config)
    (tmp_path / "half-downloaded").mkdir()
    engine = engine_config(data)
    broken = dataclasses.replace(engine.models, diffusion=str(tmp_path / "half-downloaded"))
    with pytest.raises(ModelUnavailable) as raised:
        Editor.load(dataclasses.replace(engine, models=broken), edit_defaults(data))
    message = str(raised.value)
    assert message.startswith(f"engine.models.diffusion: could not load {tmp_path}/half-downloaded")
    assert "download it again" in message


def test_a_gpu_that_is_not_there_is_reported_before_any_model_loads(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    models = ModelsConfig(captioner="no/such/blip")
    with pytest.raises(ConfigError, match=r"engine.device is cuda, but .*; set engine.device to auto or cpu"):
        Editor.load(EngineConfig(models=models, device="cuda", base_dir=str(tmp_path)), EditSettings())
