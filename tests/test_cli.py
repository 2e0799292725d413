"""``python -m editor`` as a user runs it, on tiny models, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path = ROOT, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}
    return subprocess.run(
        [sys.executable, "-m", "editor", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_tiny_models_then_edit_end_to_end(tmp_path: Path) -> None:
    made = _run("tiny-models", tmp_path / "models")
    assert made.returncode == 0, made.stderr
    config = tmp_path / "models" / "config.yaml"
    assert config.is_file()

    source = tmp_path / "cat.png"
    Image.new("RGBA", (90, 70), (200, 30, 30, 128)).save(source)
    outputs = []
    for name in ("first.png", "second.png"):
        done = _run("edit", source, "add a hat", "-o", tmp_path / name, "--config", config, "--seed", "5")
        assert done.returncode == 0, done.stderr
        assert "caption:" in done.stdout
        assert "before:" in done.stdout
        assert "after:" in done.stdout
        outputs.append(Image.open(tmp_path / name))
    assert outputs[0].size == (64, 48)
    assert outputs[0].tobytes() == outputs[1].tobytes()  # same seed, same image


def test_edit_reports_bad_input_politely(tmp_path: Path, tiny_config: Path) -> None:
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    done = _run("edit", not_an_image, "add a hat", "-o", tmp_path / "out.png", "--config", tiny_config)
    assert done.returncode == 2
    assert "error:" in done.stderr
    assert "Traceback" not in done.stderr
    missing = _run(
        "edit", tmp_path / "nope.png", "add a hat", "-o", tmp_path / "o.png", "--config", tiny_config
    )
    assert missing.returncode == 2
    assert "No such file" in missing.stderr


def test_without_a_hub_or_a_config_the_edit_names_the_model_and_what_to_do(tmp_path: Path) -> None:
    """Run from a folder with no config.yaml: the defaults, hub ids, and no hub (offline, empty cache)."""
    source = tmp_path / "cat.png"
    Image.new("RGB", (64, 64)).save(source)
    done = _run(
        "edit", source, "add a hat", "-o", tmp_path / "o.png", cwd=tmp_path, HF_HOME=str(tmp_path / "hf")
    )
    assert done.returncode == 2
    blip = "Salesforce/blip-image-captioning-base"
    assert done.stderr.startswith(f"error: engine.models.captioner: {blip} is not in the local model cache")
    assert "hf download Salesforce/blip-image-captioning-base" in done.stderr
    assert "None" not in done.stderr
    assert "Traceback" not in done.stderr
