"""Conversation state in one SQLite file (sqlite-utils): the edit tree, jobs and caches.

Images live in the database as PNG BLOBs next to their metadata, so one transaction
writes both: a crash leaves neither an image without its version nor a version without
its image. Every multi-row write runs in ``Database.atomic()``. The store is synchronous;
a running bot has two over the same file (WAL): the event loop's, for reads, and
:mod:`sessions.writer`'s, on its own thread, for every write (a job's life and its images,
uploads, message links, place choices, deletions), so the loop never waits on a write lock.
Reads of many images at once (a contact sheet, a grid) open read-only ones on threads
(:mod:`sessions.reader`).

The rows are read and written by the mixins :class:`Store` is made of: the edit tree
(:mod:`sessions.tree_rows`), jobs (:mod:`sessions.job_rows`), message links and places
(:mod:`sessions.place_rows`), beside the inversion cache, variations and uploads.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlite_utils import Database

from sessions.ids import new_id
from sessions.inversions import InversionCache
from sessions.job_rows import JobRows
from sessions.place_rows import PlaceRows
from sessions.schema import migrate
from sessions.uploads import Uploads
from sessions.variation_store import VariationStore


class StorageUnavailable(Exception):
    """The database file cannot be opened or created; the message names it and says why."""


class Store(JobRows, PlaceRows):
    """The edit tree, jobs, message links, per-place settings and the inversion cache."""

    def __init__(self, db: Database, inversion_cache_bytes: int) -> None:
        self.db = db
        self.inversions = InversionCache(db, inversion_cache_bytes)
        self.variations = VariationStore(db, self.inversions, new_id)
        self.uploads = Uploads(db)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        inversion_cache_bytes: int = 512 * 1024 * 1024,
        busy_timeout_s: float = 10.0,
        read_only: bool = False,
    ) -> Store:
        """Open (creating if needed) and migrate the database; ``":memory:"`` works too.

        ``read_only`` opens an existing, migrated file for reads alone (a reader thread's own
        connection, see :mod:`sessions.reader`): nothing is created, migrated or written.
        Raises :class:`StorageUnavailable` (one line: the path and why) when it cannot be opened.
        """
        on_disk = str(path) != ":memory:"
        folder = Path(path).parent
        if on_disk and folder.exists() and not folder.is_dir():
            raise StorageUnavailable(f"cannot open the database {path}: {folder} is a file, not a folder")
        try:
            if read_only:
                uri = f"{Path(path).resolve().as_uri()}?mode=ro"
                connection = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s)
            else:
                if on_disk:
                    folder.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(str(path), timeout=busy_timeout_s)
            db = Database(connection)
            db.execute("PRAGMA foreign_keys = ON")
            db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if not read_only:
                if on_disk:
                    _enable_wal(db, busy_timeout_s)
                migrate(db)
        except (OSError, sqlite3.Error) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise StorageUnavailable(f"cannot open the database {path}: {reason}") from error
        return cls(db, inversion_cache_bytes)

    def close(self) -> None:
        self.db.close()


def _enable_wal(db: Database, timeout_s: float) -> None:
    """Switch to WAL, waiting while another process holds the lock.

    SQLite answers a journal-mode change made while another connection writes (a second process
    migrating a fresh file) with "database is locked" at once, without its busy handler.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
