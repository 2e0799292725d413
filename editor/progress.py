"""Progress of queued jobs, delivered from the worker thread to the event loop.

The worker thread never touches a :class:`JobHandle` directly: it hands updates to a
:class:`LoopDelivery`, which batches them under a lock and wakes the loop once per batch
(``loop.call_soon_threadsafe``), not once per diffusion step. On the loop each handle fans its
updates out to its readers. Consecutive updates of one state only refine each other (a newer
place in the queue, a later step), so at every hop a slow reader keeps the latest of each
state and no buffer ever holds more than one entry per state.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncGenerator, MutableSequence
from dataclasses import dataclass, field
from typing import Literal

from editor.types import WorkResult

ProgressState = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class Progress:
    """One state of a job: waiting (with its 1-based place), running (stage and step), or final."""

    job_id: str
    state: ProgressState
    queue_position: int | None = None
    stage: str | None = None
    step: int = 0
    total: int = 0
    #: The latest preview of the edit forming (PNG), on every running update once there is one.
    preview: bytes | None = field(default=None, repr=False)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


#: What a job ended with: its result or the error to raise from :meth:`JobHandle.result`.
Outcome = WorkResult | BaseException


def _coalesce(updates: MutableSequence[Progress], update: Progress) -> None:
    """Append ``update``, replacing the last one if it is of the same state (see the module docstring)."""
    if updates and updates[-1].state == update.state:
        updates[-1] = update
    else:
        updates.append(update)


class _Listener:
    """One reader of :meth:`JobHandle.progress`: its unread updates and a wake-up."""

    def __init__(self, first: Progress) -> None:
        self.unread: deque[Progress] = deque([first])
        self.wake = asyncio.Event()

    def push(self, update: Progress) -> None:
        _coalesce(self.unread, update)
        self.wake.set()


class JobHandle:
    """The event loop's view of one submitted job: its progress and its outcome.

    Everything here runs on the event loop's thread; the worker thread only appends to
    ``_pending`` under the :class:`LoopDelivery` lock.
    """

    def __init__(self, job_id: str, requester: str, first: Progress) -> None:
        self.job_id = job_id
        self.requester = requester
        self._latest = first
        self._listeners: set[_Listener] = set()
        self._finished = asyncio.Event()
        self._outcome: Outcome | None = None
        self._pending: list[Progress] = []
        self._pending_outcome: Outcome | None = None

    @property
    def latest(self) -> Progress:
        return self._latest

    def progress(self) -> AsyncGenerator[Progress, None]:
        """Updates from the latest state on, ending after the final one.

        A reader gets every state the job enters from this call on (queued, running, the
        final one), even before its first read: a job can finish before the reader's task
        first runs. Unread updates within one state are replaced by newer ones, so a slow
        reader never holds more than one per state. A late reader starts at the latest.
        """
        listener = _Listener(self._latest)
        self._listeners.add(listener)
        return self._read(listener)

    async def _read(self, listener: _Listener) -> AsyncGenerator[Progress, None]:
        try:
            while True:
                if not listener.unread:
                    listener.wake.clear()
                    await listener.wake.wait()
                    continue
                update = listener.unread.popleft()
                yield update
                if update.final:
                    return
        finally:
            self._listeners.discard(listener)

    async def result(self) -> WorkResult:
        """The result (a tuple for a batch); raises EditCancelled or EditFailed, nothing else."""
        await self._finished.wait()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None  # a finished job has a result or an error
        return self._outcome

    def _deliver(self, update: Progress, outcome: Outcome | None) -> None:
        if update == self._latest:
            return
        self._latest = update
        for listener in self._listeners:
            listener.push(update)
        if update.final:
            self._outcome = outcome
            self._finished.set()


#: An update for one handle; the outcome goes with a final update only.
Update = tuple[JobHandle, Progress, Outcome | None]


class LoopDelivery:
    """Hands updates from any thread to the handles on ``loop``, one wake-up per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._dirty: list[JobHandle] = []
        self._flush_scheduled = False

    def post(self, updates: list[Update]) -> None:
        """Queue updates for the loop and schedule one flush per batch (from any thread)."""
        if not updates:
            return
        with self._lock:
            for handle, update, outcome in updates:
                if not handle._pending:
                    self._dirty.append(handle)
                _coalesce(handle._pending, update)
                if update.final:
                    handle._pending_outcome = outcome
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, []
            batches = [(handle, handle._pending, handle._pending_outcome) for handle in dirty]
            for handle in dirty:
                handle._pending = []
            self._flush_scheduled = False
        for handle, updates, outcome in batches:
            for update in updates:
                handle._deliver(update, outcome)
