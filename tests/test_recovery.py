"""Crash recovery: a bot process is killed with SIGKILL mid-edit and started again.

The process is tests/support/recovery_helper.py (the real store, service and worker around
the stand-in engine, which can hold an edit forever), so the kill lands mid-job every time: the
test waits until the database itself says the edit is running.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sessions.store import Store
from tests.support.db_checks import database_problems

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def helper(database: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.recovery_helper", str(database), *args],
        cwd=REPO,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def job_row(database: Path, instruction: str) -> tuple[str, int] | None:
    """(state, attempts) of a job as another process sees it, or None before it exists."""
    if not database.exists():
        return None
    connection = sqlite3.connect(database, timeout=10)
    try:
        return connection.execute(
            "SELECT state, attempts FROM jobs WHERE instruction = ?", [instruction]
        ).fetchone()
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        connection.close()


def kill_when(process: subprocess.Popen[str], database: Path, rows: dict[str, tuple[str, int]]) -> None:
    """SIGKILL the process as soon as every job named in ``rows`` is in its (state, attempts)."""
    deadline = time.monotonic() + 60
    while any(job_row(database, instruction) != row for instruction, row in rows.items()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"the jobs never reached {rows}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def resume(database: Path) -> dict[str, dict[str, str]]:
    """Start again; return each recovered job's reported outcome by instruction."""
    process = helper(database, "resume")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return {line["instruction"]: line for line in map(json.loads, out.splitlines())}


def check_consistent(database: Path) -> Store:
    store = Store.open(database)
    assert database_problems(store) == []  # integrity, references, no lost uploads, no orphan versions
    return store


def test_a_job_killed_mid_edit_runs_again_and_the_queued_one_follows(tmp_path: Path) -> None:
    database = tmp_path / "bot.db"
    # The scarf is asked for once the hat runs: kill when both are in the database.
    in_flight = {"add a hat": ("running", 1), "add a scarf": ("queued", 0)}
    kill_when(helper(database, "crash-mid-edit"), database, in_flight)

    outcomes = resume(database)

    assert {name: line["outcome"] for name, line in outcomes.items()} == {
        "add a hat": "done",
        "add a scarf": "done",
    }
    store = check_consistent(database)
    hat = store.get_job(outcomes["add a hat"]["job"])
    assert (hat.state, hat.attempts, hat.reply_context) == ("done", 2, {"message": 10})
    versions = store.get_version(outcomes["add a scarf"]["version"])
    assert [v.instruction for v in store.conversation_versions(versions.conversation_id)] == [
        None,
        "make it snowy",
        "add a hat",
        "add a scarf",
    ]
    store.close()


def test_a_job_that_crashes_the_bot_twice_is_reported_interrupted(tmp_path: Path) -> None:
    database = tmp_path / "bot.db"
    in_flight = {"add a hat": ("running", 1), "add a scarf": ("queued", 0)}
    kill_when(helper(database, "crash-mid-edit"), database, in_flight)
    kill_when(helper(database, "resume", "--hold", "add a hat"), database, {"add a hat": ("running", 2)})

    outcomes = resume(database)

    assert outcomes["add a hat"]["outcome"] == "JobFailed"
    assert "restarted twice" in outcomes["add a hat"]["message"]
    assert outcomes["add a scarf"]["outcome"] == "done"
    store = check_consistent(database)
    assert store.job_counts() == {"done": 2, "interrupted": 1}
    store.close()
