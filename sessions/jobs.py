"""Jobs between the store and the edit worker: submitting, recording in order, crash recovery.

The service adds a job to the store and hands it here; :class:`JobRunner` builds its edit
request, queues it on the worker and records how it ended. Decisions worth knowing:

* **Order within a conversation.** The worker is fair between requesters, so jobs of one
  conversation may *run* out of order (another person's earlier request can wait behind
  their own backlog). Results are nonetheless *recorded* in submission order per
  conversation: a finished job waits until every job of its conversation submitted
  before it was recorded, failed or cancelled. So versions (their ids, ``created_at`` and
  the transport's replies, which follow ``Ticket.result()``) appear in the order people
  asked. Failures and cancels are reported at once; they create nothing to order.
* **Reuse.** An edit of a version reuses that version's cached inversion and BLIP
  caption, so retry, stronger, subtler and a second branch run neither BLIP nor the
  inversion. The inversion an edit returns is that of its *input*, so it is cached for
  the source version. A request built while the first edit of its source is still
  running cannot use it yet and inverts again.
* **Crash recovery.** A job counts an attempt when the worker starts it. On start, jobs
  left queued are queued again; jobs left running run again unless they already had
  ``MAX_RUNS`` attempts (a crash each time), then they are marked interrupted.
* **Watching.** One log line per request and per outcome (ids, never content) and the
  Prometheus metrics (:mod:`sessions.metrics`) are fed here, where every outcome passes.
* **The outbox.** A job that ended is not yet told: its transport marks it delivered once the
  result is posted and the status finished. On start, every ended job not delivered comes back
  as a ticket that is already resolved, so its transport delivers it (at least once).
* **Writes** of a job's life (and its images) go through :class:`sessions.writer.Writer`, off
  the event loop; reads use the loop's own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic, TypeVar

from editor.config import LimitsConfig
from editor.failures import EditFailed, WorkerRejected, WorkerStopped
from editor.progress import JobHandle, Progress
from editor.types import EditCancelled, EditRequest, EditSettings, Inversion, Work, WorkResult
from editor.worker import EditWorker
from sessions.encoding import edit_outcome, original_png, variations_made
from sessions.errors import JobFailed, Postponed, Rejected, UserError
from sessions.metrics import EditMetrics, error_kind
from sessions.models import Job, VariationSet, Version
from sessions.store import Store
from sessions.variations import variation_requests
from sessions.writer import Writer

log = logging.getLogger(__name__)

#: A job is started at most this often; a crash during the last run marks it interrupted.
MAX_RUNS = 2

INTERRUPTED_MESSAGE = (
    "The bot restarted twice while working on this edit, so it was stopped to be safe. "
    "Please try again, perhaps with fewer steps or a smaller image."
)
POSTPONED_MESSAGE = "The bot is restarting; your edit is saved and will run as soon as it is back."
UNEXPECTED_MESSAGE = "Something went wrong while saving your edit. It was logged; please try again."


#: What a job ends with: a version, or the alternatives of a variations job.
R = TypeVar("R")


class Ticket(Generic[R]):
    """A transport's handle on one job: its record, its progress and its outcome."""

    def __init__(self, job: Job, handle: JobHandle | None, outcome: asyncio.Future[R]) -> None:
        self.job = job
        self._handle = handle
        self._outcome = outcome

    @property
    def job_id(self) -> str:
        return self.job.id

    async def progress(self) -> AsyncIterator[Progress]:
        """The worker's updates until the job ends (nothing for a job that never reached it)."""
        if self._handle is None:
            return
        async for update in self._handle.progress():
            yield update

    async def result(self) -> R:
        """The new version (the alternatives, for variations); raises UserError (failed,
        postponed) or EditCancelled."""
        return await asyncio.shield(self._outcome)


class JobRunner:
    """Queues the store's jobs on the worker and records their outcomes; use it from one event loop.

    ``inversion_key(settings)`` names the cached inversion an edit with those settings can reuse;
    ``models`` (role -> model id) goes into each result's provenance; ``limits`` bound uploads.
    """

    def __init__(
        self,
        store: Store,
        writer: Writer,
        worker: EditWorker,
        inversion_key: Callable[[EditSettings], str],
        *,
        models: Mapping[str, str],
        limits: LimitsConfig,
    ) -> None:
        self._store = store
        self._writer = writer
        self._models = dict(models)
        self._limits = limits
        self._worker = worker
        self._inversion_key = inversion_key
        #: The task following each job that is in the worker or whose result is being saved.
        self._runners: dict[str, asyncio.Task[None]] = {}
        #: Per conversation: resolved once its latest submitted job is recorded or ended.
        self._last_in_line: dict[str, asyncio.Future[None]] = {}
        self.metrics = EditMetrics(worker, store)

    async def submit(self, job: Job) -> Ticket[Any]:
        """Queue a job just added to the store; one the worker refuses is forgotten (Rejected)."""
        request = self._build_request(job.id)
        try:
            handle = self._worker.submit(job.id, job.requester_id, request)
        except WorkerRejected as error:
            await self._writer.run(lambda store: store.discard_job(job.id))
            self.metrics.ended("rejected")
            log.info("edit request of %s refused: %s", job.requester_id, type(error).__name__)
            raise Rejected(str(error)) from error
        log.info(
            "edit %s requested (%s) by %s in conversation %s",
            job.id,
            job.kind,
            job.requester_id,
            job.conversation_id,
        )
        return self._follow(job, handle, request)

    async def recover(self) -> list[Ticket[Any]]:
        """Tickets for the jobs a crash or a stop left undelivered: ended ones first (already
        resolved), then the unfinished ones, queued again."""
        undelivered = self._store.undelivered_jobs()
        # Asked for without saying where to answer: no transport can ever deliver these.
        given_up = [job.id for job in undelivered if not job.reply_context]
        if given_up:
            log.warning("edits %s ended with no reply context; nobody to tell them to", ", ".join(given_up))

            def give_up(store: Store) -> None:
                for job_id in given_up:
                    store.mark_delivered(job_id)

            await self._writer.run(give_up)
        tickets = [self._ended(job) for job in undelivered if job.reply_context]
        return tickets + [await self._recover_or_fail(job) for job in self._store.unfinished_jobs()]

    def following(self, job_id: str) -> bool:
        """Whether the job is in the worker or its result is being saved."""
        return job_id in self._runners

    async def settle(self) -> None:
        """Wait until every followed job is recorded (after the worker stopped)."""
        if self._runners:
            await asyncio.wait(list(self._runners.values()))

    def stats(self) -> dict[str, Any]:
        """Queue depth, the running job, jobs by state and cache size, for the health check."""
        return {
            "queue_depth": self._worker.queue_depth,
            "running_job_id": self._worker.running_job_id,
            "jobs": self._store.job_counts(),
            "inversion_cache_bytes": self._store.inversions.size(),
        }

    # --- recovery --------------------------------------------------------------------------

    def _ended(self, job: Job) -> Ticket[Any]:
        """A resolved ticket for a job that ended before its requester was told how."""
        log.info("edit %s ended before it was delivered; delivering it now", job.id)
        outcome: asyncio.Future[Any] = _outcome_future()
        if job.state == "done" and job.kind == "variations":
            outcome.set_result(self._store.variations.get(job.id))
        elif job.state == "done" and job.result_version_id is not None:
            outcome.set_result(self._store.get_version(job.result_version_id))
        elif job.state == "cancelled":
            outcome.set_exception(EditCancelled("The edit was cancelled."))
        else:
            outcome.set_exception(JobFailed(job.error or UNEXPECTED_MESSAGE))
        return Ticket(job, None, outcome)

    async def _recover_or_fail(self, job: Job) -> Ticket[Any]:
        """One unreadable leftover job (say, settings an older version wrote) must not stop the bot."""
        try:
            return await self._recover(job)
        except Exception:
            log.exception("job %s could not be taken up again after a restart", job.id)
            return await self._end(job, "failed", UNEXPECTED_MESSAGE)

    async def _recover(self, job: Job) -> Ticket[Any]:
        """Queue a job left over by a crash or stop again, or end it if it keeps crashing."""
        if job.state == "running" and job.attempts >= MAX_RUNS:
            log.warning("job %s was interrupted %d times; giving up", job.id, job.attempts)
            self.metrics.ended("interrupted")
            return await self._end(job, "interrupted", INTERRUPTED_MESSAGE)
        await self._writer.run(lambda store: store.requeue(job.id, refund_attempt=False))
        request = self._build_request(job.id)
        try:
            handle = self._worker.submit(job.id, job.requester_id, request)
        except WorkerRejected as error:
            return await self._end(job, "failed", str(error))
        log.info("job %s taken up again after a restart", job.id)
        requeued = self._store.get_job(job.id)
        assert requeued is not None  # it was read from the store a moment ago
        return self._follow(requeued, handle, request)

    async def _end(self, job: Job, state: str, message: str) -> Ticket[Any]:
        ended = await self._writer.run(lambda store: store.finish_job(job.id, state, message))
        return _ended_ticket(ended, JobFailed(message))

    # --- running and recording -------------------------------------------------------------

    def _build_request(self, job_id: str) -> Work:
        """The job's edit request (a batch for variations), with the cached inversion and caption
        of the image it edits (the source's, or the original's in chain mode compose) when known."""
        spec = self._store.job_spec(job_id)
        inversion = None
        source_id = spec.base_version_id
        if source_id is not None:
            key = self._inversion_key(spec.settings)
            data = self._store.inversions.peek(source_id, key)
            if data is not None:
                try:
                    inversion = Inversion.from_bytes(data)
                except ValueError:
                    log.warning("dropping an unreadable cached inversion of version %s", source_id)
                    self._writer.post(lambda store: store.inversions.drop(source_id, key))
                else:
                    self._writer.post(lambda store: store.inversions.touch(source_id, key))
        request = EditRequest(
            image=spec.image_png,
            instruction=spec.job.instruction,
            settings=spec.settings,
            seed=spec.seed,
            inversion=inversion,
            caption=spec.source_caption,
            captions=spec.captions,
            prior=spec.prior,
            previews=spec.previews,
        )
        return variation_requests(request) if spec.job.kind == "variations" else request

    def _follow(self, job: Job, handle: JobHandle, request: Work) -> Ticket[Any]:
        """Start the task that records the job's outcome, in line behind its conversation."""
        loop = asyncio.get_running_loop()
        ahead = self._last_in_line.get(job.conversation_id)
        done_here: asyncio.Future[None] = loop.create_future()
        self._last_in_line[job.conversation_id] = done_here
        outcome: asyncio.Future[Any] = _outcome_future()
        # Read from now on, before the worker's updates can reach the loop: a fast job must
        # still be seen running (and its attempt counted).
        updates = handle.progress()
        task = asyncio.create_task(
            self._run(job, handle, request, updates, ahead=ahead, done_here=done_here, outcome=outcome)
        )
        self._runners[job.id] = task
        task.add_done_callback(lambda _: self._runners.pop(job.id, None))
        return Ticket(job, handle, outcome)

    async def _run(
        self,
        job: Job,
        handle: JobHandle,
        request: Work,
        updates: AsyncIterator[Progress],
        *,
        ahead: asyncio.Future[None] | None,
        done_here: asyncio.Future[None],
        outcome: asyncio.Future[Any],
    ) -> None:
        """Record how the job ended and resolve its ticket; whatever fails (even the write of a
        failure), the ticket is resolved, so no requester waits forever."""
        try:
            await self._record_ending(job, handle, request, updates, ahead=ahead, outcome=outcome)
        except Exception:
            log.exception("recording how job %s ended failed", job.id)
        finally:
            if not outcome.done():
                self.metrics.failed("recording")
                outcome.set_exception(JobFailed(UNEXPECTED_MESSAGE))
            done_here.set_result(None)
            if self._last_in_line.get(job.conversation_id) is done_here:
                del self._last_in_line[job.conversation_id]

    async def _record_ending(
        self,
        job: Job,
        handle: JobHandle,
        request: Work,
        updates: AsyncIterator[Progress],
        *,
        ahead: asyncio.Future[None] | None,
        outcome: asyncio.Future[Any],
    ) -> None:
        """Wait for the worker, then (after the jobs asked before it in its conversation) record
        the result, failure, cancel or stop, and set it on ``outcome``."""
        watcher = asyncio.create_task(self._mark_when_running(job.id, updates, queued_at=time.monotonic()))
        try:
            try:
                result = await handle.result()
            finally:
                await watcher
            if ahead is not None:
                await ahead
            recorded = await self._record(job, result, request)
            self.metrics.done(result, job.kind)
            log.info(
                "edit %s done: %s in %.1f s",
                job.id,
                f"version {recorded.id}" if isinstance(recorded, Version) else "variations",
                _run_seconds(result),
            )
            outcome.set_result(recorded)
        except WorkerStopped:
            await self._writer.run(lambda store: store.requeue(job.id, refund_attempt=True))
            self.metrics.ended("postponed")
            log.info("edit %s postponed until the next start", job.id)
            outcome.set_exception(Postponed(POSTPONED_MESSAGE))
        except EditCancelled as error:
            await self._finish(job.id, "cancelled", "The edit was cancelled.")
            self.metrics.ended("cancelled")
            log.info("edit %s cancelled", job.id)
            outcome.set_exception(EditCancelled(str(error)))
        except EditFailed as error:
            await self._finish(job.id, "failed", error.user_message)
            kind = error_kind(error.__cause__ or error)
            self.metrics.failed(kind)
            log.info("edit %s failed (%s)", job.id, kind)
            outcome.set_exception(JobFailed(error.user_message))
        except Exception:
            log.exception("recording job %s failed", job.id)
            self.metrics.failed("recording")
            with contextlib.suppress(Exception):
                await self._finish(job.id, "failed", UNEXPECTED_MESSAGE)
            outcome.set_exception(JobFailed(UNEXPECTED_MESSAGE))

    async def _record(self, job: Job, result: WorkResult, request: Work) -> Version | VariationSet:
        """Encode the result (and a start job's upload) off the loop, then write it: a version,
        or a job's alternatives."""
        if isinstance(result, tuple):
            assert isinstance(request, tuple)
            made, inversion = await asyncio.to_thread(variations_made, result, request, self._models)
            now = time.time()
            return await self._writer.run(lambda store: store.variations.record(job.id, made, inversion, now))
        assert isinstance(request, EditRequest)
        edit = await asyncio.to_thread(edit_outcome, result, request, self._models)
        if job.kind == "start":
            assert isinstance(request.image, bytes)  # a start job's upload, as stored
            original = await asyncio.to_thread(original_png, request.image, self._limits)
            edit = dataclasses.replace(edit, original=original)
        return await self._writer.run(lambda store: store.record_result(job.id, edit))

    async def _finish(self, job_id: str, state: str, error: str) -> None:
        await self._writer.run(lambda store: store.finish_job(job_id, state, error))

    async def _mark_when_running(
        self, job_id: str, updates: AsyncIterator[Progress], *, queued_at: float
    ) -> None:
        """Record the start of the run (and count the attempt) when the worker takes the job."""
        async for update in updates:
            if update.state == "running":
                await self._writer.run(lambda store: store.mark_running(job_id))
                self.metrics.started(time.monotonic() - queued_at)
                break


def _outcome_future() -> asyncio.Future[Any]:
    outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    outcome.add_done_callback(_retrieve)
    return outcome


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an outcome's exception as seen: a ticket's result may never be awaited (no log noise)."""
    if not future.cancelled():
        future.exception()


def _ended_ticket(job: Job, error: UserError | EditCancelled) -> Ticket[Any]:
    outcome = _outcome_future()
    outcome.set_exception(error)
    return Ticket(job, None, outcome)


def _run_seconds(result: WorkResult) -> float:
    """How long the edit (or the batch, whose results share their timings) ran."""
    first = result[0] if isinstance(result, tuple) else result
    return sum(first.timings.values())
