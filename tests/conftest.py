"""Shared fixtures: offline mode, and tiny random-weight models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``config.yaml`` of a folder of tiny models written by ``editor.tiny``."""
    from editor.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_config: Path) -> Path:
    return tiny_config.parent
