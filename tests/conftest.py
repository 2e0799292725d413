"""Shared fixtures: offline mode, and tiny random-weight models built once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

os.environ["HF_HUB_OFFLINE"] = "1"
# CI runs the property tests on fixed examples, so a rare counterexample found by a random
# draw is reported by a developer's run (HYPOTHESIS_PROFILE=explore) instead of failing CI by chance.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``config.yaml`` of a folder of tiny models: the engine's and the evaluation's CLIP and DINO."""
    from evaluation.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_config: Path) -> Path:
    return tiny_config.parent


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Run a module's tiny-model tests on one torch thread, then restore the previous count.

    Tiny models do microsecond-sized matrix products: with two threads on a busy machine
    the threads mostly wait for each other (BLIP captioning measured 1.5-14 s instead of 0.09 s).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
