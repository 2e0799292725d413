"""The threads that run edits, one per replica, behind one fair queue that the event loop never waits on.

Models are not safe to share between threads and a GPU runs one edit at a time anyway, so each
replica (the editor in this process, or one on a GPU elsewhere: ``editor.ray_replicas``) is owned
by one daemon thread, which takes the next job from the queue as soon as its replica is free. The
queue, the caps and fairness live here once, whatever the backend. The event loop only takes a
lock for a few microseconds to queue, cancel or inspect jobs; the threads hand progress back through
:class:`editor.progress.LoopDelivery` (one wake-up per batch of updates, not one per step).

Fairness: each job gets a round number. A requester's first waiting job joins the
current round; each further job of theirs goes one round later; a requester whose
job has just started waits for the next round. Jobs run in (round, submission) order,
so one person's backlog of five delays someone else's single edit by one of those five
at most. Who may queue at all is :mod:`editor.admission`'s rule (fair shares of the queue).

A replica lost mid-job (:class:`ReplicaLost`: its process died or stopped answering) fails only
that attempt: the job goes back to the head of the queue and runs on the next free replica; after
``MAX_ATTEMPTS`` losses it is reported to its requester.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from editor.admission import Load, refusal
from editor.failures import (
    REPLICA_LOST_MESSAGE,
    EditFailed,
    ReplicaLost,
    WorkerStopped,
    WorkerStopping,
    explain,
)
from editor.progress import JobHandle, LoopDelivery, Outcome, Progress, ProgressState, Update
from editor.replicas import InProcess, RayConfig, Replica
from editor.types import EditCancelled, SupportsEdit, Work, WorkResult

logger = logging.getLogger(__name__)

#: Runs of one job; a replica lost during the last one reports the job as failed.
MAX_ATTEMPTS = 2
#: How long a replica's thread waits for it to come back before looking at the worker's state again.
_READY_POLL_S = 0.5


@dataclass(frozen=True)
class WorkerConfig:
    """Section ``worker`` of config.yaml."""

    #: People waiting (not counting running jobs) before a newcomer is refused; see editor.admission.
    max_queue: int = 50
    #: Jobs one requester may have waiting or running at once.
    per_user_cap: int = 3
    #: A running edit is stopped and reported as failed after this many seconds.
    job_timeout_s: float = 900.0
    #: ``local``: the models in this process, one thread; ``ray``: replicas on Ray (section ``ray``).
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {self.max_queue}")
        if self.per_user_cap < 1:
            raise ValueError(f"per_user_cap must be at least 1, got {self.per_user_cap}")
        if not self.job_timeout_s > 0:
            raise ValueError(f"job_timeout_s must be positive, got {self.job_timeout_s}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be local or ray, got {self.backend!r}")


@dataclass(eq=False)
class _Job:
    """The worker's record of a job; fields change only under the worker's lock."""

    job_id: str
    requester: str
    request: Work
    seq: int
    #: The fairness round (see the module docstring); jobs run in (round, seq) order.
    round: int
    handle: JobHandle
    #: 1-based place while waiting, as last told to the handle; None once running.
    position: int | None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    #: Why the cancel event was set: "cancelled", "timeout" or "stopped" (first one wins).
    stop_reason: str | None = None
    #: Runs started so far (a replica lost mid-job makes another).
    attempts: int = 0

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.cancel_event.set()


def _run_key(job: _Job) -> tuple[int, int]:
    return (job.round, job.seq)


def _seq(job: _Job) -> int:
    return job.seq


class EditWorker:
    """Runs jobs on its replicas, one at a time each, fairly between requesters.

    ``editor`` is the editor of this process (one replica) or the replicas themselves.
    ``submit``, ``cancel`` and the inspectors are cheap and non-blocking (linear in the
    number of waiting jobs at worst): call them from the event loop (``cancel`` and the
    inspectors from any thread).
    """

    def __init__(self, editor: SupportsEdit | Sequence[Replica], config: WorkerConfig) -> None:
        self._replicas = list(editor) if isinstance(editor, Sequence) else [InProcess(editor)]
        self._config = config
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        #: Waiting jobs in the order they will run.
        self._order: list[_Job] = []
        self._waiting_by_requester: dict[str, int] = {}
        self._jobs: dict[str, _Job] = {}
        #: Running jobs in the order they started.
        self._running: dict[str, _Job] = {}
        self._round = 0
        self._last_round: dict[str, int] = {}
        self._seq = itertools.count()
        self._accepting = False
        self._threads: list[threading.Thread] = []
        self._delivery: LoopDelivery | None = None
        self._interrupted: list[_Job] = []
        #: How long an edit takes lately (a moving average), for refusals that say when to retry.
        self._run_s: float | None = None

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start one thread per replica; progress is delivered to the running event loop."""
        with self._lock:
            if self._threads:
                raise RuntimeError("EditWorker.start() was called twice")
            self._delivery = LoopDelivery(asyncio.get_running_loop())
            self._accepting = True
            self._threads = [
                threading.Thread(target=self._serve, args=(replica,), name=f"edit-worker-{n}", daemon=True)
                for n, replica in enumerate(self._replicas)
            ]
            for thread in self._threads:
                thread.start()

    async def stop(self, drain: bool = False) -> list[str]:
        """Stop taking jobs and end the threads; return the ids of jobs that did not run.

        With ``drain`` the waiting jobs run first (on the replicas still up). Without it the
        running jobs are cancelled and the waiting ones are left unrun; all of them resolve
        with :class:`WorkerStopped`, and their ids come back (the interrupted ones first, then
        the waiting ones, each in submission order) so the caller can run them again later.
        """
        with self._lock:
            threads = self._threads
            if not threads:
                return []
            self._accepting = False
            unrun = [] if drain else self._drop_waiting_locked()
            if not drain:
                for job in self._running.values():
                    job.request_stop("stopped")
            self._work_ready.notify_all()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        with self._lock:
            self._threads = []
            unrun += self._drop_waiting_locked()  # left by replicas that never came back
            interrupted, self._interrupted = self._interrupted, []
        return [job.job_id for job in sorted(interrupted, key=_seq) + sorted(unrun, key=_seq)]

    def _drop_waiting_locked(self) -> list[_Job]:
        unrun, self._order = self._order, []
        self._waiting_by_requester.clear()
        for job in unrun:
            self._end_locked(job, "cancelled", WorkerStopped("The editor stopped before this edit ran."))
        return unrun

    # -- the event loop's side --------------------------------------------------------

    def submit(self, job_id: str, requester: str, request: Work) -> JobHandle:
        """Queue a job; raises a :class:`WorkerRejected` whose message the requester can read."""
        with self._lock:
            if self._delivery is None or asyncio.get_running_loop() is not self._delivery.loop:
                raise RuntimeError("submit() must be called on the event loop that started the worker")
            if job_id in self._jobs:
                raise ValueError(f"job {job_id!r} is already waiting or running")
            self._admit_locked(requester)
            waiting = self._waiting_by_requester.get(requester, 0)
            seq = next(self._seq)
            run_round = self._first_round(requester) + waiting
            index = bisect.bisect_right(self._order, (run_round, seq), key=_run_key)
            handle = JobHandle(job_id, requester, Progress(job_id, "queued", queue_position=index + 1))
            job = _Job(
                job_id=job_id,
                requester=requester,
                request=request,
                seq=seq,
                round=run_round,
                handle=handle,
                position=index + 1,
            )
            self._order.insert(index, job)
            self._waiting_by_requester[requester] = waiting + 1
            self._jobs[job_id] = job
            self._post_many(self._repositioned_locked(start=index + 1))
            self._work_ready.notify()
            return handle

    def check_admission(self, requester: str) -> None:
        """Raise the :class:`WorkerRejected` that :meth:`submit` would raise now, if any: lets a
        caller refuse before it downloads or decodes anything."""
        with self._lock:
            self._admit_locked(requester)

    def _admit_locked(self, requester: str) -> None:
        if not self._accepting:
            raise WorkerStopping("The editor is restarting; please try again in a minute.")
        mine_waiting = self._waiting_by_requester.get(requester, 0)
        places = (place for place, job in enumerate(self._order, 1) if job.requester == requester)
        load = Load(
            waiting=len(self._order),
            waiting_people=len(self._waiting_by_requester),
            mine_waiting=mine_waiting,
            mine_running=sum(job.requester == requester for job in self._running.values()),
            my_first_place=next(places, None) if mine_waiting else None,
            # Replicas run side by side: a turn of the queue takes a share of an edit's time.
            run_s=None if self._run_s is None else self._run_s / len(self._replicas),
        )
        refused = refusal(load, self._config.max_queue, self._config.per_user_cap)
        if refused is not None:
            raise refused

    def cancel(self, job_id: str) -> bool:
        """Cancel one job: a waiting one is dropped at once, a running one stops within a step.

        Returns False when the job is unknown or already finished.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if job_id in self._running:
                job.request_stop("cancelled")
                return True
            self._order.remove(job)
            self._forget_waiting_locked(job.requester)
            for other in self._order:  # the requester's later jobs move up one round
                if other.requester == job.requester and other.round > job.round:
                    other.round -= 1
            self._order.sort(key=_run_key)
            self._end_locked(job, "cancelled", EditCancelled("The edit was cancelled before it started."))
            self._post_many(self._repositioned_locked())
            return True

    @property
    def queue_depth(self) -> int:
        """Jobs waiting, not counting the running ones."""
        with self._lock:
            return len(self._order)

    @property
    def running_job_id(self) -> str | None:
        """The longest-running job (None when every replica is idle)."""
        with self._lock:
            return next(iter(self._running), None)

    def position(self, job_id: str) -> int | None:
        """1-based place of a waiting job in the run order; None if it is not waiting."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.position if job is not None else None

    # -- scheduling (all under self._lock) --------------------------------------------

    def _first_round(self, requester: str) -> int:
        """The round of this requester's first waiting job (see the module docstring).

        Rounds of waiting jobs never change when another job starts (the started job has
        the smallest round), so they are computed once, at submission.
        """
        return max(self._round, self._last_round.get(requester, self._round - 1) + 1)

    def _forget_waiting_locked(self, requester: str) -> None:
        left = self._waiting_by_requester[requester] - 1
        if left:
            self._waiting_by_requester[requester] = left
        else:
            del self._waiting_by_requester[requester]

    def _repositioned_locked(self, start: int = 0) -> list[Update]:
        """Updates for the waiting jobs from ``start`` on whose place changed."""
        updates: list[Update] = []
        for position, job in enumerate(self._order[start:], start=start + 1):
            if job.position != position:
                job.position = position
                updates.append((job.handle, Progress(job.job_id, "queued", queue_position=position), None))
        return updates

    def _end_locked(self, job: _Job, state: ProgressState, outcome: Outcome) -> None:
        del self._jobs[job.job_id]
        self._post_many([(job.handle, Progress(job.job_id, state), outcome)])

    # -- the replicas' threads ---------------------------------------------------------

    def _serve(self, replica: Replica) -> None:
        while self._until_ready(replica) and (job := self._next_job()) is not None:
            self._run(job, replica)

    def _until_ready(self, replica: Replica) -> bool:
        """Wait while the replica is being replaced; False once the worker stops meanwhile."""
        while not replica.ready(_READY_POLL_S):
            with self._lock:
                if not self._accepting:
                    return False
        return True

    def _next_job(self) -> _Job | None:
        """Wait for work; None once stopped and (when draining) the queue is empty."""
        with self._work_ready:
            while self._accepting and not self._order:
                self._work_ready.wait()
            if not self._order:
                return None
            job = self._order.pop(0)
            self._forget_waiting_locked(job.requester)
            self._round = job.round
            self._last_round[job.requester] = job.round
            self._last_round = {r: n for r, n in self._last_round.items() if n >= job.round}
            self._running[job.job_id] = job
            job.attempts += 1
            job.position = None
            self._post_many(
                [(job.handle, Progress(job.job_id, "running"), None), *self._repositioned_locked()]
            )
            return job

    def _run(self, job: _Job, replica: Replica) -> None:
        preview: bytes | None = None

        def report(stage: str, step: int, total: int) -> None:
            update = Progress(job.job_id, "running", stage=stage, step=step, total=total, preview=preview)
            self._post_many([(job.handle, update, None)])

        def show(png: bytes) -> None:
            # Carried by every later update: a reader that skips some still gets the latest.
            nonlocal preview
            preview = png

        timer = threading.Timer(self._config.job_timeout_s, self._expire, args=(job,))
        timer.daemon = True
        timer.start()
        ended: tuple[ProgressState, Outcome] | None
        started = time.monotonic()
        try:
            result: WorkResult
            if isinstance(job.request, tuple):
                result = tuple(
                    replica.edit_many(job.request, callback=report, cancel=job.cancel_event, preview=show)
                )
            else:
                result = replica.edit(job.request, callback=report, cancel=job.cancel_event, preview=show)
            ended = "done", result
        except BaseException as error:  # even SystemExit from a library fails only this job
            ended = self._failure(job, error)
        finally:
            timer.cancel()
        with self._lock:
            del self._running[job.job_id]
            if ended is not None and ended[0] == "done":
                took = time.monotonic() - started
                self._run_s = took if self._run_s is None else 0.7 * self._run_s + 0.3 * took
            if ended is None:
                self._retry_locked(job)
                return
            state, outcome = ended
            if state == "done" and job.stop_reason == "cancelled":
                # cancel() said yes (after the editor's last check): keep its word, drop the result.
                state, outcome = "cancelled", EditCancelled("The edit was cancelled.")
            if isinstance(outcome, WorkerStopped):
                self._interrupted.append(job)
            self._end_locked(job, state, outcome)

    def _retry_locked(self, job: _Job) -> None:
        """Put a job whose replica was lost back where its round puts it: at the head, as a rule."""
        index = bisect.bisect_right(self._order, _run_key(job), key=_run_key)
        self._order.insert(index, job)
        self._waiting_by_requester[job.requester] = self._waiting_by_requester.get(job.requester, 0) + 1
        self._post_many(self._repositioned_locked(start=index))
        self._work_ready.notify()

    def _expire(self, job: _Job) -> None:
        with self._lock:
            if job.job_id in self._running:
                job.request_stop("timeout")

    def _failure(self, job: _Job, error: BaseException) -> tuple[ProgressState, BaseException] | None:
        """Turn whatever the editor raised into what the requester is told; None: run it again."""
        name = f"Edit {job.job_id} of {job.requester}"
        if not isinstance(error, ReplicaLost) or job.stop_reason is not None:
            return explain(error, stop_reason=job.stop_reason, timeout_s=self._config.job_timeout_s, job=name)
        logger.warning("%s lost its replica on run %d: %s", name, job.attempts, error)
        if job.attempts < MAX_ATTEMPTS:
            return None
        failure = EditFailed(REPLICA_LOST_MESSAGE)
        failure.__cause__ = error
        return "failed", failure

    def _post_many(self, updates: list[Update]) -> None:
        """Hand updates to the event loop (from either thread; see :mod:`editor.progress`)."""
        assert self._delivery is not None  # jobs exist only after start()
        self._delivery.post(updates)
