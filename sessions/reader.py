"""Reads too heavy for the event loop, each on a thread with a read-only connection of its own.

Most reads are a row or two and stay on the loop's connection. A contact sheet or a grid of
variations reads dozens of full-size PNGs, and drawing them takes seconds: done on the loop,
that would stall every conversation. datasette's shape, as for writes (:mod:`sessions.writer`):
such a read is a function of a :class:`Store`, run on a worker thread over a connection opened
there (a SQLite connection stays in the thread that opened it), and closed after. These reads
come from a person's command, seldom; a connection costs far less than the images it reads.
With WAL they read while the writer writes, and a read-only connection can't write at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sessions.store import Store

T = TypeVar("T")


class Reader:
    """Runs heavy reads on threads, over read-only stores from ``open_store`` (one per read)."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._open_store = open_store

    async def run(self, read: Callable[[Store], T]) -> T:
        """``read(store)`` on a thread, over a read-only connection of its own; its result."""
        return await asyncio.to_thread(self._read, read)

    def _read(self, read: Callable[[Store], T]) -> T:
        store = self._open_store()
        try:
            return read(store)
        finally:
            store.close()
