"""The inversion cache: DDIM inversions of versions' images, kept within a byte budget.

An inversion depends only on the image, its caption and the inversion settings, so a retry,
a stronger/subtler variant or another person's branch from the same version reuses it and
skips the costliest stage. Entries live in the ``inversions`` table beside the edit tree; the
least recently used go first once the budget is spent.
"""

from __future__ import annotations

import time

from sqlite_utils import Database


class InversionCache:
    """Cached inversions keyed by (version id, inversion key), least recently used evicted."""

    def __init__(self, db: Database, budget_bytes: int) -> None:
        self.db = db
        self.budget_bytes = budget_bytes

    def get(self, version_id: str, key: str) -> bytes | None:
        """A cached inversion of a version's image, marked as just used."""
        data = self.peek(version_id, key)
        if data is not None:
            self.touch(version_id, key)
        return data

    def peek(self, version_id: str, key: str) -> bytes | None:
        """A cached inversion without marking it used (a read: :meth:`touch` is the write)."""
        row = self.db.execute(
            "SELECT data FROM inversions WHERE version_id = ? AND key = ?", [version_id, key]
        ).fetchone()
        return None if row is None else bytes(row[0])

    def touch(self, version_id: str, key: str) -> None:
        self.db.execute(
            "UPDATE inversions SET last_used = ? WHERE version_id = ? AND key = ?",
            [time.time(), version_id, key],
        )

    def drop(self, version_id: str, key: str) -> None:
        """Forget an unreadable entry."""
        self.db.execute("DELETE FROM inversions WHERE version_id = ? AND key = ?", [version_id, key])

    def size(self) -> int:
        """Bytes held now."""
        return int(self.db.execute("SELECT coalesce(sum(size), 0) FROM inversions").fetchone()[0])

    def put(self, version_id: str, key: str, data: bytes, now: float) -> None:
        """Cache an inversion (inside the caller's transaction) and evict beyond the budget."""
        self.db.table("inversions").upsert(
            {"version_id": version_id, "key": key, "data": data, "size": len(data), "last_used": now},
            pk=("version_id", "key"),
        )
        self._evict()

    def _evict(self) -> None:
        """Keep the most recently used inversions that fit the budget, newest first.

        One entry larger than the whole budget is dropped alone rather than emptying the cache.
        """
        kept = 0
        doomed = []
        for version_id, key, size in self.db.execute(
            "SELECT version_id, key, size FROM inversions ORDER BY last_used DESC, rowid DESC"
        ).fetchall():
            if kept + size <= self.budget_bytes:
                kept += size
            else:
                doomed.append((version_id, key))
        for version_id, key in doomed:
            self.drop(version_id, key)
