"""``pip install .`` gives the three commands, each working outside the checkout.

The install is real (setuptools builds the wheel from pyproject.toml) but uses the test run's own
packages, so it needs no network: a fresh venv sees them through a ``.pth`` file, and pip
installs only this project (``--no-deps --no-build-isolation``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the package is built from (tests/ and bench/ are not part of it).
SOURCES = (
    "pyproject.toml",
    "README.md",
    "requirements.txt",
    "bot.py",
    "editor",
    "sessions",
    "handlers",
    "evaluation",
)


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.mark.slow
def test_pip_install_gives_the_three_commands(tmp_path: Path) -> None:
    source = tmp_path / "checkout"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
    (Path(site.stdout.strip()) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    installed = _run(
        python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", source, cwd=tmp_path
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    elsewhere = tmp_path / "elsewhere"  # no checkout, no config.yaml here
    elsewhere.mkdir()
    for command, says in (
        ("onthefly", "--console"),
        ("onthefly-edit", "tiny-models"),
        ("onthefly-eval", "--protocol"),
    ):
        done = _run(venv / "bin" / command, "--help", cwd=elsewhere)
        assert done.returncode == 0, done.stderr
        assert says in done.stdout
    where = _run(
        python,
        "-c",
        "import editor, bot; from editor.captions import SHIPPED_TEMPLATES as t; "
        "print(editor.__file__, bot.__file__, *sorted(p.stem for p in t.glob('*.txt')))",
        cwd=elsewhere,
    )
    assert where.returncode == 0, where.stderr
    editor_file, bot_file, *templates = where.stdout.split()
    assert editor_file.startswith(str(venv))  # the installed copy, not the checkout
    assert bot_file.startswith(str(venv))
    assert templates == ["few_shot", "zero_shot"]
