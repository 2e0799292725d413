"""``bench/gpu_bench.py --tiny`` runs start to finish on the CPU and prints its one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_bench_runs_on_tiny_models(tiny_models_dir: Path) -> None:
    """Every run (eager, edit_many, reference, offload, compiled with Dynamo's eager backend)."""
    command = [
        sys.executable,
        str(ROOT / "bench/gpu_bench.py"),
        "--tiny",
        "--models",
        str(tiny_models_dir),
        "--steps",
        "2",
        "--lm-tokens",
        "8",
        "--compile-backend",
        "eager",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = finished.stdout[finished.stdout.index("gpu_bench: CPU") :].splitlines()
    runs = [line[:21].strip() for line in table[3:] if line[:4] in ("ours", "diff")]
    assert runs == [
        "ours eager",
        "ours edit_many",
        "ours edit_many",
        "diffusers reference",
        "ours offload",
        "ours compiled (eager)",
    ]
    assert "skipped" not in finished.stdout
    eager = next(line for line in table if line.startswith("ours eager"))
    assert eager.split()[2:4] == ["2", "1"]  # N, K
