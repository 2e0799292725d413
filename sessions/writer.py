"""One thread that makes every write to the database, so the event loop never waits on SQLite.

datasette's shape: a write is a function of a :class:`Store`, queued for a thread that owns a
connection of its own; its result (or error) is handed back to the waiting coroutine with
``call_soon_threadsafe``. With WAL the loop's connection keeps reading meanwhile and never
meets a write lock, and a PNG or an inversion written in a transaction costs the loop nothing.
Writes run one at a time in the order they were queued, so a read made after awaiting a write
sees it (and every write queued before it).

Every write's outcome reaches its waiter, whatever the write raised, and the thread goes on
serving: one bad write must not leave every later ``run()`` waiting forever. A closed writer
refuses new writes at once for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sessions.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Write = Callable[[Store], Any]
#: A queued write and where its outcome goes (None: nobody waits; failures are logged).
_Item = tuple[Write, asyncio.AbstractEventLoop, "asyncio.Future[Any] | None"]


class WriteFailed(Exception):
    """A write raised what a waiting coroutine should not receive as is (SystemExit, StopIteration,
    ...); the original is its ``__cause__``."""


class WriterClosed(Exception):
    """A write was asked of a writer that was closed: nothing would ever run it."""


class Writer:
    """Runs writes on its own thread and connection, opened by ``open_store`` in that thread."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._open_store = open_store
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        #: Guards ``_closed`` with the queue, so no write is queued behind the last one served.
        self._closing = threading.Lock()
        self._closed = False
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="store-writer", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            raise self._open_error

    async def run(self, write: Callable[[Store], T]) -> T:
        """``write(store)`` on the writer's thread; its result, or its exception raised here
        (WriteFailed for one that is not an ordinary Exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((write, loop, future))
        return await future

    def post(self, write: Write) -> None:
        """Queue a write nobody waits for (bookkeeping, such as marking a cache entry used)."""
        self._put((write, asyncio.get_running_loop(), None))

    def close(self) -> None:
        """Finish the queued writes, then close the writer's connection; later writes are refused."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _put(self, item: _Item) -> None:
        with self._closing:
            if self._closed:
                raise WriterClosed("the database writer is closed")
            self._queue.put(item)

    def _serve(self) -> None:
        try:
            store = self._open_store()
        except BaseException as error:
            self._open_error = error
            self._closed = True
            return
        finally:
            self._opened.set()
        try:
            while (item := self._queue.get()) is not None:
                _write(store, *item)
        finally:
            store.close()


def _write(
    store: Store, write: Write, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any] | None
) -> None:
    try:
        outcome: tuple[bool, Any] = (True, write(store))
    except BaseException as error:  # anything: the waiter must hear, and the thread must go on
        if future is None:
            log.exception("a background write to the database failed")
        outcome = (False, _deliverable(error))
    if future is not None:
        _hand_back(loop, future, outcome)


def _deliverable(error: BaseException) -> Exception:
    """The error as a waiting coroutine can receive it: a future refuses StopIteration, and a
    SystemExit or KeyboardInterrupt raised in a coroutine would stop the whole event loop."""
    if isinstance(error, Exception) and not isinstance(error, StopIteration):
        return error
    failed = WriteFailed(f"a write to the database raised {type(error).__name__}")
    failed.__cause__ = error
    return failed


def _hand_back(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: tuple[bool, Any]
) -> None:
    def resolve() -> None:
        if future.done():  # the waiter was cancelled; the write happened all the same
            return
        ok, value = outcome
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(resolve)
