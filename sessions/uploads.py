"""Uploads recorded before they are fetched: the first entry of a new conversation's outbox.

A request that brings an image is written here before the download starts and leaves in the
transaction that records its job (``Store.add_job(upload_id=...)``), so a crash while the image
is on its way leaves a row the next start fetches again, instead of a request nobody answers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlite_utils import Database

from sessions.models import Author, Place, Upload


class Uploads:
    """The ``uploads`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        upload_id: str,
        place: Place,
        requester: Author,
        instruction: str,
        *,
        source: str,
        reply_context: dict[str, Any],
    ) -> Upload:
        """Record an upload; its id is the job id it will become (the transport's Cancel names it)."""
        upload = Upload(upload_id, place, requester, instruction, source, reply_context)
        self.db.table("uploads").insert(
            {
                "id": upload.id,
                "transport": place.transport,
                "guild_id": place.guild_id,
                "channel_id": place.channel_id,
                "thread_id": place.thread_id,
                "requester_id": requester.id,
                "requester_name": requester.name,
                "instruction": instruction,
                "source": source,
                "reply_context": json.dumps(reply_context),
                "created_at": time.time(),
            }
        )
        return upload

    def all(self, upload_id: str | None = None) -> list[Upload]:
        """Uploads not yet turned into jobs (or the one of that id), oldest first."""
        where, params = ("WHERE id = ?", [upload_id]) if upload_id is not None else ("", [])
        return [
            Upload(
                row["id"],
                Place(row["transport"], row["guild_id"], row["channel_id"], row["thread_id"]),
                Author(row["requester_id"], row["requester_name"]),
                row["instruction"],
                row["source"],
                json.loads(row["reply_context"]),
            )
            for row in self.db.query(f"SELECT * FROM uploads {where} ORDER BY created_at, rowid", params)
        ]

    def delete(self, upload_id: str) -> None:
        self.db.execute("DELETE FROM uploads WHERE id = ?", [upload_id])
