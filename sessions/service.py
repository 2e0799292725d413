"""The conversation service: what transports (Discord, the console chat) ask of the bot.

It turns requests (start, continue, retry, stronger, subtler) into jobs recorded in the
store and run by the edit worker, and turns finished jobs into versions of an edit tree.

Decisions worth knowing:

* **Branches, never overwrites.** Every edit adds a child version to its source; two
  people continuing one version at once make two siblings.
* **Jobs.** Recording results in request order, reusing cached inversions and captions,
  and taking up jobs after a crash are :mod:`sessions.jobs`' business; listeners added here
  hear about every recovered job so its requester can be told the outcome.
* **Servers are walls.** Every request names the place it comes from; a version (or a job,
  for moderators) is used only from a place that shares its scope (:meth:`Place.shares_scope`).
* **Nothing heavy on the loop.** Requests are admitted (caps) before any image is decoded;
  decoding runs on threads, reading and drawing many images on :mod:`sessions.reader`'s, and a
  job's writes go through :mod:`sessions.writer`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from PIL import Image

from editor.config import LimitsConfig
from editor.failures import WorkerRejected
from editor.images import check_instruction
from editor.types import EditRequest, EditSettings, InvalidInput
from editor.worker import EditWorker
from sessions.derived import STRENGTH_STEP, DerivedEdits, Edit
from sessions.errors import NotFound, Rejected
from sessions.ids import new_id
from sessions.jobs import JobRunner, Ticket
from sessions.metrics import EditMetrics
from sessions.models import Author, JobKind, Place, VariationSet, Version
from sessions.moderation import Moderation
from sessions.outbox import Outbox
from sessions.places import PlaceChoices
from sessions.queries import TreeQueries
from sessions.reader import Reader
from sessions.store import Store
from sessions.variations import draw_grid
from sessions.writer import Writer

log = logging.getLogger(__name__)


class CheckedInput(Protocol):
    """What ``check_inputs`` returns that the service reads: the tidied instruction."""

    @property
    def instruction(self) -> str: ...


class ServiceEditor(Protocol):
    """What the service needs of the editor (``editor.engine.Editor``, or a stand-in in tests).

    The worker runs the edits; the service only reads the editor's defaults and limits, names
    cached inversions, and checks a request the way the engine will before it is queued.
    """

    @property
    def defaults(self) -> EditSettings: ...
    @property
    def template_names(self) -> tuple[str, ...]: ...
    @property
    def limits(self) -> LimitsConfig: ...
    @property
    def model_ids(self) -> dict[str, str]: ...
    def inversion_key(self, settings: EditSettings) -> str: ...
    def check_inputs(self, request: EditRequest) -> CheckedInput: ...
    def check_captions(self, captions: tuple[tuple[str, ...], tuple[str, ...]]) -> None: ...


Listener = Callable[[Ticket[Any]], Awaitable[None]]


def _new_seed() -> int:
    return secrets.randbelow(2**31)


class EditService(PlaceChoices, TreeQueries, Moderation, DerivedEdits):
    """Conversations as edit trees over one store, one edit worker and the editor it runs.

    ``editor.check_inputs(request)`` validates a request the way the engine will, so bad input
    is refused before it is queued; the original is stored as posted (full size, within the
    limits) and the engine resizes it for each edit. The service starts and stops the worker.
    Use it from one event loop.
    """

    def __init__(
        self, store: Store, writer: Writer, worker: EditWorker, editor: ServiceEditor, *, reader: Reader
    ) -> None:
        super().__init__(store, writer, editor.defaults, editor.template_names)
        self._reader = reader
        self._worker = worker
        self._editor = editor
        self._jobs = JobRunner(
            store, writer, worker, editor.inversion_key, models=editor.model_ids, limits=editor.limits
        )
        #: What the transports still owe their users: uploads being fetched, results to deliver.
        self.outbox = Outbox(store, writer)
        self._listeners: list[Listener] = []

    @property
    def limits(self) -> LimitsConfig:
        """What an upload and an instruction may be, so a transport can refuse them early."""
        return self._editor.limits

    def check_instruction(self, text: str) -> str:
        """The instruction as the engine will read it (normalised), or Rejected (too long, ...)."""
        try:
            return check_instruction(text, self.limits)
        except InvalidInput as error:
            raise Rejected(str(error)) from error

    def new_job_id(self) -> str:
        """An id for a request not made yet, so its status can carry its Cancel button at once."""
        return new_id()

    def check_admission(self, author: Author) -> None:
        """Raise Rejected when a request of ``author`` would be refused now (per-user cap, a
        busy queue): lets a transport refuse before it downloads anything."""
        try:
            self._worker.check_admission(author.id)
        except WorkerRejected as error:
            self._jobs.metrics.ended("rejected")
            log.info("edit request of %s refused: %s", author.id, type(error).__name__)
            raise Rejected(str(error)) from error

    # --- life cycle ---------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        """``await callback(ticket)`` for each job recovered by :meth:`start`; keep it short
        (start a task to follow the ticket) since start() waits for the listeners."""
        self._listeners.append(callback)

    async def start(self) -> None:
        """Start the worker and take up the jobs a crash or a stop left undelivered."""
        await self._worker.start()
        tickets = await self._jobs.recover()
        calls = [listener(ticket) for ticket in tickets for listener in self._listeners]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("a recovery listener failed", exc_info=outcome)

    async def stop(self) -> None:
        """Stop the worker; jobs it did not finish stay queued in the store for the next start."""
        await self._worker.stop(drain=False)
        await self._jobs.settle()

    # --- requests -----------------------------------------------------------------------

    async def start_edit(
        self,
        place: Place,
        author: Author,
        image: bytes,
        instruction: str,
        *,
        reply_context: dict[str, Any] | None = None,
        upload_id: str | None = None,
    ) -> Ticket[Version]:
        """Edit a new image: it becomes the original (root) of a new conversation.

        ``upload_id`` names the recorded upload (``outbox.record_upload``) this request fulfils;
        the job keeps its id. EditCancelled if it was cancelled while being fetched.
        """
        self.check_admission(author)
        settings = self.channel_settings(place)
        seed = _new_seed()
        request = EditRequest(image=image, instruction=instruction, settings=settings, seed=seed)
        checked, size = await asyncio.to_thread(self._checked_upload, request)
        previews = self.channel_policy(place).previews
        # The upload is kept as posted (the engine resizes it for each edit), so the root, /history
        # and an undo to it show what the person sent; it becomes a PNG off the loop, when recorded.
        job = await self._writer.run(
            lambda store: store.add_job(
                kind="start",
                place=place,
                requester=author,
                instruction=checked.instruction,
                settings=settings,
                seed=seed,
                input_png=image,
                input_size=size,
                previews=previews,
                reply_context=reply_context or {},
                upload_id=upload_id,
            )
        )
        return await self._jobs.submit(job)

    async def continue_edit(
        self,
        version_id: str,
        author: Author,
        instruction: str,
        *,
        place: Place,
        reply_context: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Ticket[Version]:
        """Edit a version with a new instruction, using its conversation's current settings."""
        source = self.get_version(version_id, place=place)
        settings = self.channel_settings(self._store.conversation_place(source.conversation_id))
        edit = Edit(instruction, settings, _new_seed())
        return await self._request("continue", source, author, edit, reply_context, job_id=job_id)

    async def retry(
        self,
        version_id: str,
        author: Author,
        *,
        place: Place,
        reply_context: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Ticket[Version]:
        """Redo the edit that made this version from its parent, with a new seed."""
        edit, parent = self._edit_of(version_id, "retry", place)
        # A new seed samples new before/after captions: that is what makes a retry differ.
        fresh = replace(edit, seed=_new_seed(), captions=None, captions_by="model")
        return await self._request("retry", parent, author, fresh, reply_context, job_id=job_id)

    async def stronger(
        self,
        version_id: str,
        author: Author,
        *,
        place: Place,
        reply_context: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Ticket[Version]:
        """The same edit (instruction, seed, captions) pushed further."""
        edit, parent = self._rescaled(version_id, STRENGTH_STEP, "stronger", place)
        return await self._request("stronger", parent, author, edit, reply_context, job_id=job_id)

    async def subtler(
        self,
        version_id: str,
        author: Author,
        *,
        place: Place,
        reply_context: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Ticket[Version]:
        """The same edit (instruction, seed, captions) held back."""
        edit, parent = self._rescaled(version_id, 1 / STRENGTH_STEP, "subtler", place)
        return await self._request("subtler", parent, author, edit, reply_context, job_id=job_id)

    def check_fix(
        self, version_id: str, before: Sequence[str], after: Sequence[str], *, place: Place
    ) -> None:
        """Raise (Rejected) as :meth:`fix_captions` would, without queueing anything."""
        self._fixed(version_id, before, after, place)

    async def fix_captions(
        self,
        version_id: str,
        author: Author,
        before: Sequence[str],
        after: Sequence[str],
        *,
        place: Place,
        reply_context: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Ticket[Version]:
        """Redo this version's edit from its parent with a person's before/after captions.

        No language model runs and the parent's cached inversion is reused; the new version's
        captions are marked as a person's. Captions CLIP would cut short, or that change
        nothing, are refused (Rejected) before anything is queued.
        """
        fixed, parent = self._fixed(version_id, before, after, place)
        return await self._request("fix", parent, author, fixed, reply_context, job_id=job_id)

    async def variations(
        self,
        version_id: str,
        author: Author,
        *,
        place: Place,
        reply_context: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Ticket[VariationSet]:
        """Alternatives of this version's edit, from its parent, as one batch on the parent's
        inversion: other language-model samples and strengths (see :mod:`sessions.variations`)."""
        edit, parent = self._edit_of(version_id, "vary", place)
        fresh = replace(edit, seed=_new_seed(), captions=None, captions_by="model")
        return await self._request("variations", parent, author, fresh, reply_context, job_id=job_id)

    def variation_set(self, job_id: str, *, place: Place) -> VariationSet:
        found = self._store.variations.get(job_id)
        if found is None or not found.variations:
            raise NotFound("I can't find those variations; they may be from another bot or not made yet.")
        self._within(self.get_job(job_id).conversation_id, place)
        return found

    async def variation_grid(self, job_id: str, *, place: Place) -> bytes:
        """One PNG of a variations job's alternatives, numbered like the buttons that pick them;
        the images are read and drawn on a thread (:mod:`sessions.reader`), off the event loop."""
        numbers = [variation.number for variation in self.variation_set(job_id, place=place).variations]
        return await self._reader.run(
            lambda store: draw_grid([store.variations.image_png(job_id, n) or b"" for n in numbers])
        )

    def variation_png(self, job_id: str, number: int, *, place: Place) -> bytes:
        self._within(self.get_job(job_id).conversation_id, place)
        data = self._store.variations.image_png(job_id, number)
        if data is None:
            raise NotFound(f"There is no variation {number} of that edit.")
        return data

    async def pick_variation(self, job_id: str, number: int, author: Author, *, place: Place) -> Version:
        """Make alternative ``number`` a version (a child of the edit's parent); the others stay
        pickable. Picking it again gives the same version."""
        self.variation_png(job_id, number, place=place)
        now = time.time()
        version_id = await self._writer.run(lambda store: store.variations.pick(job_id, number, author, now))
        assert version_id is not None  # the variation exists
        return self._version(version_id)

    async def link_message(self, transport: str, message_id: str | int, version_id: str) -> None:
        """Remember that a transport's message shows a version (several messages may)."""
        self._version(version_id)
        await self._writer.run(lambda store: store.link_message(transport, str(message_id), version_id))

    def stats(self) -> dict[str, Any]:
        """Queue depth, the running job, jobs by state and cache size, for a health check."""
        return self._jobs.stats()

    @property
    def metrics(self) -> EditMetrics:
        """This service's Prometheus metrics, for a transport's ops endpoint to serve."""
        return self._jobs.metrics

    # --- internals ------------------------------------------------------------------------

    def _check(self, request: EditRequest) -> CheckedInput:
        """The engine's own checks of a request (decodes the image: call it on a thread)."""
        try:
            return self._editor.check_inputs(request)
        except InvalidInput as error:
            raise Rejected(str(error)) from error

    def _checked_upload(self, request: EditRequest) -> tuple[CheckedInput, tuple[int, int]]:
        checked = self._check(request)
        assert isinstance(request.image, bytes)
        with Image.open(io.BytesIO(request.image)) as header:
            return checked, header.size

    async def _request(
        self,
        kind: JobKind,
        source: Version,
        author: Author,
        edit: Edit,
        reply_context: dict[str, Any] | None,
        *,
        job_id: str | None,
    ) -> Ticket[Any]:
        self.check_admission(author)
        request = EditRequest(
            image=self._store.image_png(source.id) or b"",
            instruction=edit.instruction,
            settings=edit.settings,
            seed=edit.seed,
            captions=edit.captions,
        )
        checked = await asyncio.to_thread(self._check, request)
        policy = self.channel_policy(self.place_of(source))
        job = await self._writer.run(
            lambda store: store.add_job(
                kind=kind,
                chain=policy.chain,
                previews=policy.previews,
                source_version_id=source.id,
                requester=author,
                instruction=checked.instruction,
                settings=edit.settings,
                seed=edit.seed,
                captions=edit.captions,
                captions_by=edit.captions_by,
                reply_context=reply_context or {},
                job_id=job_id,
            )
        )
        return await self._jobs.submit(job)
