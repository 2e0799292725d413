"""What the service answers about the edit tree: versions, their images, lineages, links.

:class:`EditService` inherits these queries; they read the store only (many images at once
on a reader thread). Deleted versions stay in the tree (their branches need them) but leave
/history and are skipped by undo. Servers are walls: a version is only used from a place that
shares its scope (:meth:`Place.shares_scope`), whatever the transport delivered.
"""

from __future__ import annotations

from sessions.contact_sheet import draw_lineage, shown_steps
from sessions.errors import NotAllowed, NotFound, NothingToUndo
from sessions.models import Job, Place, Version
from sessions.reader import Reader
from sessions.store import Store

#: The longest history drawn on one contact sheet (the original and the latest steps).
CONTACT_SHEET_LIMIT = 40
ELSEWHERE = "That result belongs to another server or a private chat, so I can't use it here."


class TreeQueries:
    """Read-only questions about conversations, over the store."""

    _store: Store
    _reader: Reader

    def get_version(self, version_id: str, *, place: Place) -> Version:
        """A version, for a request made in ``place`` (NotAllowed from another server or chat)."""
        version = self._version(version_id)
        self._within(version.conversation_id, place)
        return version

    def _version(self, version_id: str) -> Version:
        version = self._store.get_version(version_id)
        if version is None:
            raise NotFound("I can't find that image version; it may be from another bot or was mistyped.")
        return version

    def _within(self, conversation_id: str, place: Place) -> None:
        if not self._store.conversation_place(conversation_id).shares_scope(place):
            raise NotAllowed(ELSEWHERE)

    def get_job(self, job_id: str) -> Job:
        job = self._store.get_job(job_id)
        if job is None:
            raise NotFound("I can't find that edit; it may be from another bot or was mistyped.")
        return job

    def image_png(self, version_id: str, *, place: Place) -> bytes:
        self.get_version(version_id, place=place)
        data = self._store.image_png(version_id)
        assert data is not None  # the schema keeps every version's image
        return data

    def undo(self, version_id: str, *, place: Place) -> Version:
        """The version this one was edited from (past deleted ones), to show again."""
        version = self.get_version(version_id, place=place)
        if version.parent_id is None:
            raise NothingToUndo("This is the original image; there is nothing to undo.")
        return next(v for v in reversed(self._store.lineage(version.parent_id)) if not v.is_deleted)

    def history(self, version_id: str, *, place: Place) -> list[Version]:
        """The lineage of a version, its original first and itself last, without deleted steps."""
        if self.get_version(version_id, place=place).is_deleted:
            raise NotFound("That result was deleted, so its history isn't shown.")
        return [version for version in self._store.lineage(version_id) if not version.is_deleted]

    def place_of(self, version: Version) -> Place:
        """Where a version's conversation lives, so a transport can keep it within its server."""
        return self._store.conversation_place(version.conversation_id)

    def conversation_versions(self, conversation_id: str) -> list[Version]:
        """Every version of a conversation (all branches) in the order they were made."""
        return self._store.conversation_versions(conversation_id)

    async def contact_sheet(self, version_id: str, *, place: Place) -> bytes:
        """A PNG of the lineage: thumbnails in order with their instructions and authors.

        Up to :data:`CONTACT_SHEET_LIMIT` full-size images are read and drawn (seconds for a long
        lineage) on a thread with its own connection (:mod:`sessions.reader`), off the event loop.
        """
        lineage = self.history(version_id, place=place)
        shown = [version.id for _, version in shown_steps(lineage, CONTACT_SHEET_LIMIT)]

        def read_and_draw(store: Store) -> bytes:
            pngs = {shown_id: store.image_png(shown_id) or b"" for shown_id in shown}
            return draw_lineage(lineage, pngs, CONTACT_SHEET_LIMIT)

        return await self._reader.run(read_and_draw)

    def version_for_message(self, transport: str, message_id: str | int) -> Version | None:
        return self._store.version_for_message(transport, str(message_id))
