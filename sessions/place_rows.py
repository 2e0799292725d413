"""The rows a transport keeps per place and per message: links and per-place JSON state.

A mixin of :class:`sessions.store.Store`, apart because these rows are the transports'
bookkeeping (which message shows which version; a channel's settings and flags), not the
edit tree or its jobs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlite_utils import Database

from sessions.models import Place


class PlaceRows:
    """Message links and the ``places`` table, on the store's connection."""

    db: Database

    def link_message(self, transport: str, message_id: str, version_id: str) -> None:
        self.db.table("message_links").upsert(
            {
                "transport": transport,
                "message_id": str(message_id),
                "version_id": version_id,
                "created_at": time.time(),
            },
            pk=("transport", "message_id"),
        )

    def is_linked(self, transport: str, version_id: str) -> bool:
        """Whether a message of the transport shows the version (its result was posted)."""
        found = self.db.execute(
            "SELECT 1 FROM message_links WHERE transport = ? AND version_id = ? LIMIT 1",
            [transport, version_id],
        ).fetchone()
        return found is not None

    def place_settings(self, place: Place) -> dict[str, Any]:
        """The edit-setting overrides of a place (only the settings that differ)."""
        return self._place_json(place, "settings")

    def place_options(self, place: Place) -> dict[str, Any]:
        """Free-form per-place state of the transports (flags, the console's current version)."""
        return self._place_json(place, "options")

    def update_place(self, place: Place, column: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into a place's ``settings`` or ``options``; None removes a key."""
        if column not in ("settings", "options"):
            raise ValueError(f"places have no JSON column {column!r}")
        with self.db.atomic():
            current = self._place_json(place, column)
            for name, value in changes.items():
                if value is None:
                    current.pop(name, None)
                else:
                    current[name] = value
            self.db.execute(
                "INSERT INTO places (key, transport, guild_id, channel_id, thread_id) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                [place.key, place.transport, place.guild_id, place.channel_id, place.thread_id],
            )
            self.db.execute(f"UPDATE places SET {column} = ? WHERE key = ?", [json.dumps(current), place.key])
        return current

    def _place_json(self, place: Place, column: str) -> dict[str, Any]:
        row = self.db.execute(f"SELECT {column} FROM places WHERE key = ?", [place.key]).fetchone()
        return {} if row is None else json.loads(row[0])
