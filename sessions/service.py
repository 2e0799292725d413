"""The conversation service: what transports (Discord, the console chat) ask of the bot.

It turns requests (start, continue, retry, stronger, subtler) into jobs recorded in the
store and run by the edit worker, and turns finished jobs into versions of an edit tree.

Decisions worth knowing:

* **Branches, never overwrites.** Every edit adds a child version to its source; two
  people continuing one version at once make two siblings.
* **Jobs.** Recording results in request order, reusing cached inversions and captions,
  and taking up jobs after a crash are :mod:`sessions.jobs`' business; listeners added here
  hear about every recovered job so its requester can be told the outcome.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from PIL import Image

from editor.config import LimitsConfig
from editor.types import EditRequest, EditSettings, InvalidInput
from editor.worker import EditWorker
from sessions.contact_sheet import draw_lineage
from sessions.errors import NotAllowed, NotFound, NothingToUndo, Rejected, UserError
from sessions.jobs import JobRunner, Ticket
from sessions.metrics import EditMetrics
from sessions.models import Author, Job, JobKind, Place, Version
from sessions.store import Store

log = logging.getLogger(__name__)

#: stronger / subtler multiply the edit's strength by this factor (or divide by it).
STRENGTH_STEP = 1.5
#: The longest history drawn on one contact sheet (the original and the latest steps).
CONTACT_SHEET_LIMIT = 40


@dataclass(frozen=True)
class _Edit:
    """The parts of an edit that retry, stronger and subtler keep or change."""

    instruction: str
    settings: EditSettings
    seed: int
    captions: tuple[tuple[str, ...], tuple[str, ...]] | None = None


class CheckedInput(Protocol):
    """What ``check_inputs`` returns: the image the engine will edit and the tidied instruction."""

    @property
    def image(self) -> Image.Image: ...
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
    def inversion_key(self, settings: EditSettings) -> str: ...
    def check_inputs(self, request: EditRequest) -> CheckedInput: ...


Listener = Callable[[Ticket], Awaitable[None]]


def _new_seed() -> int:
    return secrets.randbelow(2**31)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class EditService:
    """Conversations as edit trees over one store, one edit worker and the editor it runs.

    ``editor.check_inputs(request)`` validates a request the way the engine will and returns
    the normalised image, so bad input is refused before it is queued and the original
    stored is exactly what the engine edits. The service starts and stops the worker. Use
    it from one event loop.
    """

    def __init__(self, store: Store, worker: EditWorker, editor: ServiceEditor) -> None:
        self._store = store
        self._worker = worker
        self._editor = editor
        self._jobs = JobRunner(store, worker, editor.inversion_key)
        self._listeners: list[Listener] = []

    @property
    def defaults(self) -> EditSettings:
        """The edit settings of a place without overrides."""
        return self._editor.defaults

    @property
    def templates(self) -> tuple[str, ...]:
        """The prompt templates a place's ``template`` setting may name."""
        return self._editor.template_names

    @property
    def limits(self) -> LimitsConfig:
        """What an upload and an instruction may be, so a transport can refuse them early."""
        return self._editor.limits

    # --- life cycle ---------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        """``await callback(ticket)`` for each job recovered by :meth:`start`; keep it short
        (start a task to follow the ticket) since start() waits for the listeners."""
        self._listeners.append(callback)

    async def start(self) -> None:
        """Start the worker and take up the jobs a crash or a stop left unfinished."""
        await self._worker.start()
        tickets = self._jobs.recover()
        calls = [listener(ticket) for ticket in tickets for listener in self._listeners]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("a recovery listener failed", exc_info=outcome)

    async def stop(self) -> None:
        """Stop the worker; jobs it did not finish stay queued in the store for the next start."""
        await self._worker.stop(drain=False)
        await self._jobs.settle()

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
        return self._jobs.submit(job)

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
        if self._jobs.following(job_id):
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
        return draw_lineage(self.history(version_id), self.image_png, CONTACT_SHEET_LIMIT)

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
        known = self.defaults.to_dict()
        layers = [place] if place.parent is None else [place.parent, place]
        overrides = {
            name: value
            for layer in layers
            for name, value in self._store.place_settings(layer).items()
            if name in known
        }
        return self.defaults.replace(**overrides)

    def update_channel_settings(self, place: Place, **changes: Any) -> EditSettings:
        """Override settings for a place; a value of None goes back to the default."""
        unknown = sorted(set(changes) - set(self.defaults.to_dict()))
        if unknown:
            raise Rejected(
                f"Unknown setting(s): {', '.join(unknown)}. Known: {', '.join(self.defaults.to_dict())}."
            )
        current = self.channel_settings(place)
        candidate = current.replace(**{name: value for name, value in changes.items() if value is not None})
        try:
            candidate.validate(self.templates)
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
        """Queue depth, the running job, jobs by state and cache size, for a health check."""
        return self._jobs.stats()

    @property
    def metrics(self) -> EditMetrics:
        """This service's Prometheus metrics, for a transport's ops endpoint to serve."""
        return self._jobs.metrics

    # --- internals ------------------------------------------------------------------------

    def _check(self, request: EditRequest) -> CheckedInput:
        try:
            return self._editor.check_inputs(request)
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
        return self._jobs.submit(job)
