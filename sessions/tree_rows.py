"""The edit tree's rows: conversations and their versions, read back (and marked deleted).

The base of :class:`sessions.store.Store`: every other part of the store (jobs, variations)
builds on these reads.
"""

from __future__ import annotations

import time
from typing import Any

from sqlite_utils import Database

from sessions.models import Place, Version
from sessions.schema import VERSION_COLUMNS, version_from_row


class TreeRows:
    """Conversations and versions, on the store's connection."""

    db: Database

    def conversation_place(self, conversation_id: str) -> Place:
        row = self._one(
            "SELECT transport, guild_id, channel_id, thread_id FROM conversations WHERE id = ?",
            [conversation_id],
        )
        if row is None:
            raise KeyError(conversation_id)
        return Place(**row)

    def get_version(self, version_id: str) -> Version | None:
        row = self._one(f"SELECT {VERSION_COLUMNS} FROM versions WHERE id = ?", [version_id])
        return None if row is None else version_from_row(row)

    def image_png(self, version_id: str) -> bytes | None:
        row = self.db.execute("SELECT image FROM versions WHERE id = ?", [version_id]).fetchone()
        return None if row is None else bytes(row[0])

    def lineage(self, version_id: str) -> list[Version]:
        """The version and its ancestors, root first (empty if the version does not exist)."""
        rows = self.db.query(
            f"""
            WITH RECURSIVE lineage(id, parent_id, depth) AS (
                SELECT id, parent_id, 0 FROM versions WHERE id = :id
                UNION ALL
                SELECT versions.id, versions.parent_id, lineage.depth + 1
                FROM versions JOIN lineage ON versions.id = lineage.parent_id
            )
            SELECT {VERSION_COLUMNS}
            FROM lineage JOIN versions ON versions.id = lineage.id
            ORDER BY lineage.depth DESC
            """,
            {"id": version_id},
        )
        return [version_from_row(row) for row in rows]

    def conversation_versions(self, conversation_id: str) -> list[Version]:
        """Every version of a conversation in the order they were recorded."""
        rows = self.db.query(
            f"SELECT {VERSION_COLUMNS} FROM versions WHERE conversation_id = ? ORDER BY rowid",
            [conversation_id],
        )
        return [version_from_row(row) for row in rows]

    def mark_deleted(self, version_id: str, by: str) -> Version:
        self.db.execute(
            "UPDATE versions SET deleted_at = coalesce(deleted_at, ?), deleted_by = coalesce(deleted_by, ?) "
            "WHERE id = ?",
            [time.time(), by, version_id],
        )
        version = self.get_version(version_id)
        assert version is not None
        return version

    def version_for_message(self, transport: str, message_id: str) -> Version | None:
        """The version a transport's message shows, if it is linked to one."""
        row = self._one(
            "SELECT version_id FROM message_links WHERE transport = ? AND message_id = ?",
            [transport, str(message_id)],
        )
        return None if row is None else self.get_version(row["version_id"])

    def _one(self, sql: str, params: list[Any]) -> dict[str, Any] | None:
        return next(iter(self.db.query(sql, params)), None)
