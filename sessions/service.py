"""The conversation service: what transports (Discord, the console chat) ask of the bot.

It turns requests (start, continue, retry, stronger, subtler) into jobs recorded in the
store and run by the edit worker, and turns finished jobs into versions of an edit tree.

Decisions worth knowing:

* **Branches, never overwrites.** Every edit adds a child version to its source; two
  people continuing one version at once make two siblings.
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
  ``MAX_RUNS`` attempts (a crash each time), then they are marked interrupted. Listeners
  hear about every recovered job so its requester can be told the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from PIL import Image

from editor.types import EditCancelled, EditRequest, EditResult, EditSettings, InvalidInput, Inversion
from editor.worker import EditFailed, EditWorker, JobHandle, Progress, WorkerRejected, WorkerStopped
from sessions.contact_sheet import draw_contact_sheet
from sessions.errors import JobFailed, NotAllowed, NotFound, NothingToUndo, Postponed, Rejected, UserError
from sessions.models import Author, Job, JobKind, Place, Version
from sessions.store import EditOutcome, Store

log = logging.getLogger(__name__)

#: A job is started at most this often; a crash during the last run marks it interrupted.
MAX_RUNS = 2
#: stronger / subtler multiply the edit's strength by this factor (or divide by it).
STRENGTH_STEP = 1.5
#: The longest history drawn on one contact sheet (the original and the latest steps).
CONTACT_SHEET_LIMIT = 40

INTERRUPTED_MESSAGE = (
    "The bot restarted twice while working on this edit, so it was stopped to be safe. "
    "Please try again, perhaps with fewer steps or a smaller image."
)
POSTPONED_MESSAGE = "The bot is restarting; your edit is saved and will run as soon as it is back."
UNEXPECTED_MESSAGE = "Something went wrong while saving your edit. It was logged; please try again."


@dataclass(frozen=True)
class _Edit:
    """The parts of an edit that retry, stronger and subtler keep or change."""

    instruction: str
    settings: EditSettings
    seed: int
    captions: tuple[tuple[str, ...], tuple[str, ...]] | None = None


class CheckedInput(Protocol):
    """What ``check_inputs`` returns: the image the engine will edit and the tidied instruction."""

    image: Image.Image
    instruction: str


Listener = Callable[["Ticket"], Awaitable[None]]


class Ticket:
    """A transport's handle on one job: its record, its progress and its outcome."""

    def __init__(self, job: Job, handle: JobHandle | None, outcome: asyncio.Future[Version]) -> None:
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

    async def result(self) -> Version:
        """The new version; raises UserError (failed, postponed) or EditCancelled."""
        return await asyncio.shield(self._outcome)


def _new_seed() -> int:
    return secrets.randbelow(2**31)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _retrieve(future: asyncio.Future[Version]) -> None:
    """Mark an outcome's exception as seen: a ticket's result may never be awaited (no log noise)."""
    if not future.cancelled():
        future.exception()


class EditService:
    """Conversations as edit trees over one store and one edit worker.

    ``check_inputs(request)`` validates a request the way the engine will (``Editor.check_inputs``)
    and returns the normalised image, so bad input is refused before it is queued and the
    original stored is exactly what the engine edits. The service starts and stops the
    worker. Use it from one event loop.
    """

    def __init__(
        self,
        store: Store,
        worker: EditWorker,
        defaults: EditSettings,
        inversion_key: Callable[[EditSettings], str],
        *,
        check_inputs: Callable[[EditRequest], CheckedInput],
        templates: tuple[str, ...] | None = None,
    ) -> None:
        self._store = store
        self._worker = worker
        self._defaults = defaults
        self._inversion_key = inversion_key
        self._check_inputs = check_inputs
        self._templates = templates
        self._listeners: list[Listener] = []
        self._runners: dict[str, asyncio.Task[None]] = {}
        #: Per conversation: resolved once its latest submitted job is recorded or ended.
        self._last_in_line: dict[str, asyncio.Future[None]] = {}

    # --- life cycle ---------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        """``await callback(ticket)`` for each job recovered by :meth:`start`; keep it short
        (start a task to follow the ticket) since start() waits for the listeners."""
        self._listeners.append(callback)

    async def start(self) -> None:
        """Start the worker and take up the jobs a crash or a stop left unfinished."""
        await self._worker.start()
        tickets = [self._recover_or_fail(job) for job in self._store.unfinished_jobs()]
        calls = [listener(ticket) for ticket in tickets for listener in self._listeners]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("a recovery listener failed", exc_info=outcome)

    async def stop(self) -> None:
        """Stop the worker; jobs it did not finish stay queued in the store for the next start."""
        await self._worker.stop(drain=False)
        if self._runners:
            await asyncio.wait(list(self._runners.values()))

    # --- requests -----------------------------------------------------------------------

    def start_edit(
        self,
        place: Place,
        author: Author,
        image: bytes,
        instruction: str,
        *,
        reply_context: dict[str, Any] | None = None,
    ) -> Ticket:
        """Edit a new image: it becomes the original (root) of a new conversation."""
        settings = self.channel_settings(place)
        seed = _new_seed()
        checked = self._check(EditRequest(image=image, instruction=instruction, settings=settings, seed=seed))
        job = self._store.add_job(
            kind="start",
            place=place,
            requester=author,
            instruction=checked.instruction,
            settings=settings,
            seed=seed,
            input_png=_png(checked.image),
            input_size=checked.image.size,
            reply_context=reply_context or {},
        )
        return self._submit(job)

    def continue_edit(
        self,
        version_id: str,
        author: Author,
        instruction: str,
        *,
        reply_context: dict[str, Any] | None = None,
    ) -> Ticket:
        """Edit a version with a new instruction, using its conversation's current settings."""
        source = self.get_version(version_id)
        settings = self.channel_settings(self._store.conversation_place(source.conversation_id))
        return self._request(
            "continue", source, author, _Edit(instruction, settings, _new_seed()), reply_context
        )

    def retry(
        self, version_id: str, author: Author, *, reply_context: dict[str, Any] | None = None
    ) -> Ticket:
        """Redo the edit that made this version from its parent, with a new seed."""
        edit, parent = self._edit_of(version_id, "retry")
        # A new seed samples new before/after captions: that is what makes a retry differ.
        return self._request(
            "retry", parent, author, replace(edit, seed=_new_seed(), captions=None), reply_context
        )

    def stronger(
        self, version_id: str, author: Author, *, reply_context: dict[str, Any] | None = None
    ) -> Ticket:
        """The same edit (instruction, seed, captions) pushed further."""
        return self._rescaled(version_id, author, STRENGTH_STEP, "stronger", reply_context)

    def subtler(
        self, version_id: str, author: Author, *, reply_context: dict[str, Any] | None = None
    ) -> Ticket:
        """The same edit (instruction, seed, captions) held back."""
        return self._rescaled(version_id, author, 1 / STRENGTH_STEP, "subtler", reply_context)

    async def cancel(self, job_id: str, by: Author) -> bool:
        """Cancel a waiting or running job; False if it had already ended."""
        job = self.get_job(job_id)
        if by.id != job.requester_id and not by.is_moderator:
            raise NotAllowed("Only the person who asked for this edit, or a moderator, can cancel it.")
        if job.is_final:
            return False
        if self._worker.cancel(job_id):
            return True
        if job_id in self._runners:
            return False  # finished in the worker a moment ago; its result is being saved
        # Left over from an earlier run and not taken up (start() not called yet).
        self._store.finish_job(job_id, "cancelled", "The edit was cancelled.")
        return True

    # --- queries ------------------------------------------------------------------------

    def get_version(self, version_id: str) -> Version:
        version = self._store.get_version(version_id)
        if version is None:
            raise NotFound("I can't find that image version; it may be from another bot or was mistyped.")
        return version

    def get_job(self, job_id: str) -> Job:
        job = self._store.get_job(job_id)
        if job is None:
            raise NotFound("I can't find that edit; it may be from another bot or was mistyped.")
        return job

    def image_png(self, version_id: str) -> bytes:
        self.get_version(version_id)
        data = self._store.image_png(version_id)
        assert data is not None  # the schema keeps every version's image
        return data

    def undo(self, version_id: str) -> Version:
        """The version this one was edited from, to show again."""
        version = self.get_version(version_id)
        if version.parent_id is None:
            raise NothingToUndo("This is the original image; there is nothing to undo.")
        return self.get_version(version.parent_id)

    def history(self, version_id: str) -> list[Version]:
        """The lineage of a version: its original first, the version itself last."""
        self.get_version(version_id)
        return self._store.lineage(version_id)

    def place_of(self, version: Version) -> Place:
        """Where a version's conversation lives, so a transport can keep it within its server."""
        return self._store.conversation_place(version.conversation_id)

    def conversation_versions(self, conversation_id: str) -> list[Version]:
        """Every version of a conversation (all branches) in the order they were made."""
        return self._store.conversation_versions(conversation_id)

    def contact_sheet(self, version_id: str) -> bytes:
        """A PNG of the lineage: thumbnails in order with their instructions and authors."""
        lineage = self.history(version_id)
        numbered = list(enumerate(lineage, start=1))
        if len(numbered) > CONTACT_SHEET_LIMIT:
            numbered = numbered[:1] + numbered[-(CONTACT_SHEET_LIMIT - 1) :]
        title = f"{len(lineage)} step{'s' if len(lineage) != 1 else ''} to version {version_id}"
        if len(numbered) < len(lineage):
            title += f" (steps 2-{numbered[1][0] - 1} not shown)"
        steps = [(number, version, self.image_png(version.id)) for number, version in numbered]
        return draw_contact_sheet(title, steps)

    def version_for_message(self, transport: str, message_id: str | int) -> Version | None:
        return self._store.version_for_message(transport, str(message_id))

    def link_message(self, transport: str, message_id: str | int, version_id: str) -> None:
        """Remember that a transport's message shows a version (several messages may)."""
        self.get_version(version_id)
        self._store.link_message(transport, str(message_id), version_id)

    def channel_settings(self, place: Place) -> EditSettings:
        """The defaults with the place's overrides (unknown old overrides are ignored).

        A thread inherits its channel's overrides and may override them again.
        """
        known = self._defaults.to_dict()
        layers = [place] if place.parent is None else [place.parent, place]
        overrides = {
            name: value
            for layer in layers
            for name, value in self._store.place_settings(layer).items()
            if name in known
        }
        return self._defaults.replace(**overrides)

    def update_channel_settings(self, place: Place, **changes: Any) -> EditSettings:
        """Override settings for a place; a value of None goes back to the default."""
        unknown = sorted(set(changes) - set(self._defaults.to_dict()))
        if unknown:
            raise Rejected(
                f"Unknown setting(s): {', '.join(unknown)}. Known: {', '.join(self._defaults.to_dict())}."
            )
        current = self.channel_settings(place)
        candidate = current.replace(**{name: value for name, value in changes.items() if value is not None})
        try:
            candidate.validate(self._templates)
        except InvalidInput as error:
            raise Rejected(str(error)) from error
        self._store.update_place(place, "settings", changes)
        return self.channel_settings(place)

    def channel_options(self, place: Place) -> dict[str, Any]:
        """Free-form per-place state for transports (e.g. an edit-channel flag)."""
        return self._store.place_options(place)

    def update_channel_options(self, place: Place, **changes: Any) -> dict[str, Any]:
        """Merge JSON-serialisable options into a place's; a value of None removes one."""
        return self._store.update_place(place, "options", changes)

    def stats(self) -> dict[str, Any]:
        """Queue depth, jobs by state, cache size and recent latencies, for the ops endpoint."""
        latencies = self._store.recent_latencies()
        waits = [wait for wait, _ in latencies]
        runs = [run for _, run in latencies]
        return {
            "queue_depth": self._worker.queue_depth,
            "running_job_id": self._worker.running_job_id,
            "jobs": self._store.job_counts(),
            "inversion_cache_bytes": self._store.inversion_cache_size(),
            "recent_edits": len(latencies),
            "wait_s": _summary(waits),
            "run_s": _summary(runs),
        }

    # --- internals ------------------------------------------------------------------------

    def _check(self, request: EditRequest) -> CheckedInput:
        try:
            return self._check_inputs(request)
        except InvalidInput as error:
            raise Rejected(str(error)) from error

    def _edit_of(self, version_id: str, action: str) -> tuple[_Edit, Version]:
        """How a version was made from its parent, and that parent; the original has no edit."""
        version = self.get_version(version_id)
        if (
            version.parent_id is None
            or version.instruction is None
            or version.settings is None
            or version.seed is None
        ):
            raise UserError(
                f"This is the original image, so there is no edit to {action}. "
                "Reply with an instruction to edit it."
            )
        captions = (version.before_captions, version.after_captions)
        edit = _Edit(version.instruction, version.settings, version.seed, captions if all(captions) else None)
        return edit, self.get_version(version.parent_id)

    def _rescaled(
        self,
        version_id: str,
        author: Author,
        factor: float,
        kind: JobKind,
        reply_context: dict[str, Any] | None,
    ) -> Ticket:
        """The same instruction, seed and captions with the direction scaled."""
        edit, parent = self._edit_of(version_id, "make " + kind)
        settings = edit.settings.scaled(factor)
        if settings == edit.settings:
            limit = "strong" if factor > 1 else "subtle"
            raise Rejected(f"This edit is already as {limit} as the settings allow.")
        return self._request(kind, parent, author, replace(edit, settings=settings), reply_context)

    def _request(
        self,
        kind: JobKind,
        source: Version,
        author: Author,
        edit: _Edit,
        reply_context: dict[str, Any] | None,
    ) -> Ticket:
        checked = self._check(
            EditRequest(
                image=self.image_png(source.id),
                instruction=edit.instruction,
                settings=edit.settings,
                seed=edit.seed,
                captions=edit.captions,
            )
        )
        job = self._store.add_job(
            kind=kind,
            source_version_id=source.id,
            requester=author,
            instruction=checked.instruction,
            settings=edit.settings,
            seed=edit.seed,
            captions=edit.captions,
            reply_context=reply_context or {},
        )
        return self._submit(job)

    def _build_request(self, job_id: str) -> EditRequest:
        """The job's edit request, with the source's cached inversion and caption when known."""
        spec = self._store.job_spec(job_id)
        inversion = None
        source_id = spec.job.source_version_id
        if source_id is not None:
            key = self._inversion_key(spec.settings)
            data = self._store.get_inversion(source_id, key)
            if data is not None:
                try:
                    inversion = Inversion.from_bytes(data)
                except ValueError:
                    log.warning("dropping an unreadable cached inversion of version %s", source_id)
                    self._store.drop_inversion(source_id, key)
        return EditRequest(
            image=spec.image_png,
            instruction=spec.job.instruction,
            settings=spec.settings,
            seed=spec.seed,
            inversion=inversion,
            caption=spec.source_caption,
            captions=spec.captions,
        )

    def _submit(self, job: Job) -> Ticket:
        request = self._build_request(job.id)
        try:
            handle = self._worker.submit(job.id, job.requester_id, request)
        except WorkerRejected as error:
            self._store.discard_job(job.id)
            raise Rejected(str(error)) from error
        return self._follow(job, handle, request)

    def _recover_or_fail(self, job: Job) -> Ticket:
        """One unreadable leftover job (say, settings an older version wrote) must not stop the bot."""
        try:
            return self._recover(job)
        except Exception:
            log.exception("job %s could not be taken up again after a restart", job.id)
            ended = self._store.finish_job(job.id, "failed", UNEXPECTED_MESSAGE)
            return self._ended_ticket(ended, JobFailed(UNEXPECTED_MESSAGE))

    def _recover(self, job: Job) -> Ticket:
        """Queue a job left over by a crash or stop again, or end it if it keeps crashing."""
        if job.state == "running" and job.attempts >= MAX_RUNS:
            log.warning("job %s was interrupted %d times; giving up", job.id, job.attempts)
            ended = self._store.finish_job(job.id, "interrupted", INTERRUPTED_MESSAGE)
            return self._ended_ticket(ended, JobFailed(INTERRUPTED_MESSAGE))
        self._store.requeue(job.id, refund_attempt=False)
        request = self._build_request(job.id)
        try:
            handle = self._worker.submit(job.id, job.requester_id, request)
        except WorkerRejected as error:
            ended = self._store.finish_job(job.id, "failed", str(error))
            return self._ended_ticket(ended, JobFailed(str(error)))
        log.info("job %s taken up again after a restart", job.id)
        return self._follow(self.get_job(job.id), handle, request)

    def _ended_ticket(self, job: Job, error: UserError) -> Ticket:
        outcome: asyncio.Future[Version] = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(_retrieve)
        outcome.set_exception(error)
        return Ticket(job, None, outcome)

    def _follow(self, job: Job, handle: JobHandle, request: EditRequest) -> Ticket:
        """Start the task that records the job's outcome, in line behind its conversation."""
        loop = asyncio.get_running_loop()
        ahead = self._last_in_line.get(job.conversation_id)
        done_here: asyncio.Future[None] = loop.create_future()
        self._last_in_line[job.conversation_id] = done_here
        outcome: asyncio.Future[Version] = loop.create_future()
        outcome.add_done_callback(_retrieve)
        task = asyncio.create_task(
            self._run(job, handle, request, ahead=ahead, done_here=done_here, outcome=outcome)
        )
        self._runners[job.id] = task
        task.add_done_callback(lambda _: self._runners.pop(job.id, None))
        return Ticket(job, handle, outcome)

    async def _run(
        self,
        job: Job,
        handle: JobHandle,
        request: EditRequest,
        *,
        ahead: asyncio.Future[None] | None,
        done_here: asyncio.Future[None],
        outcome: asyncio.Future[Version],
    ) -> None:
        watcher = asyncio.create_task(self._mark_when_running(job.id, handle))
        try:
            try:
                result = await handle.result()
            finally:
                await watcher
            if ahead is not None:
                await ahead
            edit = await asyncio.to_thread(_edit_outcome, result, request)
            outcome.set_result(self._store.record_result(job.id, edit))
        except WorkerStopped:
            self._store.requeue(job.id, refund_attempt=True)
            outcome.set_exception(Postponed(POSTPONED_MESSAGE))
        except EditCancelled as error:
            self._store.finish_job(job.id, "cancelled", "The edit was cancelled.")
            outcome.set_exception(EditCancelled(str(error)))
        except EditFailed as error:
            self._store.finish_job(job.id, "failed", error.user_message)
            outcome.set_exception(JobFailed(error.user_message))
        except Exception:
            log.exception("recording job %s failed", job.id)
            with contextlib.suppress(Exception):
                self._store.finish_job(job.id, "failed", UNEXPECTED_MESSAGE)
            outcome.set_exception(JobFailed(UNEXPECTED_MESSAGE))
        finally:
            done_here.set_result(None)
            if self._last_in_line.get(job.conversation_id) is done_here:
                del self._last_in_line[job.conversation_id]

    async def _mark_when_running(self, job_id: str, handle: JobHandle) -> None:
        """Record the start of the run (and count the attempt) when the worker takes the job."""
        async for update in handle.progress():
            if update.state == "running":
                self._store.mark_running(job_id)
                break


def _edit_outcome(result: EditResult, request: EditRequest) -> EditOutcome:
    """Encode a result for the store (PNG, serialised inversion); runs off the event loop."""
    inverted_now = result.inversion is not request.inversion
    return EditOutcome(
        image_png=result.image_png(),
        width=result.image.width,
        height=result.image.height,
        caption=result.caption,
        before_captions=tuple(result.before_captions),
        after_captions=tuple(result.after_captions),
        inversion=result.inversion.to_bytes() if inverted_now else None,
        inversion_key=result.inversion.key,
    )


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
    }
