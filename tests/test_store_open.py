"""Opening the database: two processes at once on a fresh file, and a path that cannot work."""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from sessions.schema import MIGRATIONS
from sessions.store import StorageUnavailable, Store
from tests.support.db_checks import database_problems


def _open_together(path: str, barrier: Barrier, errors: multiprocessing.Queue[str]) -> None:
    try:
        barrier.wait(timeout=30)
        Store.open(path, busy_timeout_s=20).close()
    except BaseException:
        errors.put(traceback.format_exc())


def test_two_processes_opening_a_fresh_database_at_once_both_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # the children share this process's imports
    for attempt in range(20):
        path = str(tmp_path / f"bot-{attempt}.db")
        barrier = context.Barrier(2)
        errors: multiprocessing.Queue[str] = context.Queue()
        children = [context.Process(target=_open_together, args=(path, barrier, errors)) for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
        assert not failures, f"attempt {attempt}: {failures[0]}"
        assert [child.exitcode for child in children] == [0, 0]
        store = Store.open(path)
        assert database_problems(store) == []
        assert MIGRATIONS.pending(store.db) == []
        names = [row[0] for row in store.db.execute("SELECT name FROM _sqlite_migrations")]
        assert len(names) == len(set(names))  # each applied once
        store.close()


@pytest.mark.parametrize("make_path", ["a file as its folder", "a folder as the file"])
def test_a_database_path_that_cannot_work_is_one_clear_error(tmp_path: Path, make_path: str) -> None:
    if make_path == "a file as its folder":
        (tmp_path / "plain-file").write_text("not a folder")
        path = tmp_path / "plain-file" / "bot.db"
    else:
        path = tmp_path / "folder.db"
        path.mkdir()
    with pytest.raises(StorageUnavailable) as raised:
        Store.open(path)
    message = str(raised.value)
    why = (
        f"{path.parent} is a file, not a folder" if make_path == "a file as its folder" else "unable to open"
    )
    assert message.startswith(f"cannot open the database {path}: {why}")
    assert "\n" not in message
