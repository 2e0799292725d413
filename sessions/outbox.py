"""What the transports still owe their users, kept in the database so a crash loses none of it.

A request's life as its transport tells it: its image is fetched (an *upload*, recorded before
the download starts), it becomes a job, the job ends (``done`` = its result is recorded), and
the transport posts the result and finishes its status message (``delivered``). On start, the
service hands every ended, undelivered job back to its transport (see :mod:`sessions.jobs`),
and the transport fetches every upload still pending again, or tells the person why it can't.
Delivery is at least once: a crash between posting and marking posts again.
"""

from __future__ import annotations

from typing import Any

from sessions.models import Author, Place, Upload
from sessions.store import Store
from sessions.writer import Writer


class Outbox:
    """Uploads being fetched and deliveries to make; reads on the loop, writes on the writer."""

    def __init__(self, store: Store, writer: Writer) -> None:
        self._store = store
        self._writer = writer

    async def record_upload(
        self,
        upload_id: str,
        place: Place,
        author: Author,
        instruction: str,
        *,
        source: str,
        reply_context: dict[str, Any],
    ) -> Upload:
        """Record a new conversation's request before its image is fetched from ``source``;
        ``EditService.start_edit(upload_id=...)`` takes it over as the job of the same id
        (``EditService.new_job_id()``), which ``EditService.cancel`` can cancel meanwhile."""
        return await self._writer.run(
            lambda store: store.uploads.add(
                upload_id, place, author, instruction, source=source, reply_context=reply_context
            )
        )

    def pending_uploads(self) -> list[Upload]:
        """Uploads recorded and never turned into a job (a crash during the download)."""
        return self._store.uploads.all()

    async def drop_upload(self, upload_id: str) -> None:
        """Forget an upload whose requester has been told why it ends (a failed download)."""
        await self._writer.run(lambda store: store.uploads.delete(upload_id))

    def is_posted(self, transport: str, version_id: str) -> bool:
        """Whether a message of the transport already shows this version (its result was posted)."""
        return self._store.is_linked(transport, version_id)

    async def mark_delivered(self, job_id: str) -> None:
        """The requester has been told how the job ended: no restart will tell them again."""
        await self._writer.run(lambda store: store.mark_delivered(job_id))
