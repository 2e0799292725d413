"""The variations table: the alternatives a variations job made, and the picking of one.

A variations job ends with its alternatives, not a version; picking one inserts it as a
version (a child of the job's source) in one transaction, and picking it again gives the
same version. The others stay in the table, retrievable and pickable later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from editor.types import EditSettings
from sessions.inversions import InversionCache
from sessions.models import Author, Variation, VariationSet


@dataclass(frozen=True)
class MadeVariation:
    """One finished alternative, ready to be recorded."""

    seed: int
    settings: EditSettings
    image_png: bytes
    width: int
    height: int
    caption: str
    before_captions: tuple[str, ...]
    after_captions: tuple[str, ...]
    notes: tuple[str, ...] = ()


class VariationStore:
    """Variations of jobs, in the store's database (``new_id`` makes version ids)."""

    def __init__(self, db: Database, inversions: InversionCache, new_id: Callable[[], str]) -> None:
        self.db = db
        self.inversions = inversions
        self.new_id = new_id

    def record(
        self,
        job_id: str,
        made: Sequence[MadeVariation],
        inversion: tuple[str, bytes] | None,
        now: float,
    ) -> VariationSet:
        """Write a variations job's alternatives, the source's caption and inversion, its end."""
        with self.db.atomic():
            job = self._job(job_id)
            if job is None or job["state"] not in ("queued", "running") or job["kind"] != "variations":
                raise ValueError(f"job {job_id!r} is not a variations job waiting for its result")
            source_id = job["source_version_id"]
            for number, item in enumerate(made, start=1):
                self.db.table("variations").insert(
                    {
                        "job_id": job_id,
                        "position": number,
                        "image": item.image_png,
                        "width": item.width,
                        "height": item.height,
                        "seed": item.seed,
                        "settings": json.dumps(item.settings.to_dict()),
                        "caption": item.caption,
                        "before_captions": json.dumps(list(item.before_captions)),
                        "after_captions": json.dumps(list(item.after_captions)),
                        "notes": json.dumps(list(item.notes)),
                    }
                )
            self.db.execute(
                "UPDATE versions SET image_caption = ? WHERE id = ? AND image_caption IS NULL",
                [made[0].caption, source_id],
            )
            if inversion is not None:
                self.inversions.put(source_id, inversion[0], inversion[1], now)
            self.db.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, error = NULL WHERE id = ?", [now, job_id]
            )
        found = self.get(job_id)
        assert found is not None
        return found

    def get(self, job_id: str) -> VariationSet | None:
        job = self._job(job_id)
        if job is None or job["kind"] != "variations":
            return None
        rows = self.db.query(
            "SELECT position, seed, settings, caption, before_captions, after_captions, width, height, "
            "version_id, notes FROM variations WHERE job_id = ? ORDER BY position",
            [job_id],
        )
        variations = tuple(
            Variation(
                number=row["position"],
                seed=row["seed"],
                settings=EditSettings.from_dict(json.loads(row["settings"])),
                caption=row["caption"],
                before_captions=tuple(json.loads(row["before_captions"])),
                after_captions=tuple(json.loads(row["after_captions"])),
                width=row["width"],
                height=row["height"],
                version_id=row["version_id"],
                notes=tuple(json.loads(row["notes"])),
            )
            for row in rows
        )
        return VariationSet(
            job_id,
            job["conversation_id"],
            job["source_version_id"],
            job["instruction"],
            job["requester_id"],
            variations,
        )

    def image_png(self, job_id: str, number: int) -> bytes | None:
        row = self.db.execute(
            "SELECT image FROM variations WHERE job_id = ? AND position = ?", [job_id, number]
        ).fetchone()
        return None if row is None else bytes(row[0])

    def pick(self, job_id: str, number: int, author: Author, now: float) -> str | None:
        """The version variation ``number`` became, inserting it on the first pick; None if unknown."""
        with self.db.atomic():
            row = next(
                iter(
                    self.db.query(
                        "SELECT v.*, j.conversation_id, j.source_version_id, j.instruction "
                        "FROM variations v JOIN jobs j ON j.id = v.job_id "
                        "WHERE v.job_id = ? AND v.position = ?",
                        [job_id, number],
                    )
                ),
                None,
            )
            if row is None:
                return None
            if row["version_id"] is not None:
                return str(row["version_id"])
            version_id = self.new_id()
            self.db.table("versions").insert(
                {
                    "id": version_id,
                    "conversation_id": row["conversation_id"],
                    "parent_id": row["source_version_id"],
                    "author_id": author.id,
                    "author_name": author.name,
                    "instruction": row["instruction"],
                    "caption": row["caption"],
                    "before_captions": row["before_captions"],
                    "after_captions": row["after_captions"],
                    "notes": row["notes"],
                    "settings": row["settings"],
                    "seed": row["seed"],
                    "image": row["image"],
                    "width": row["width"],
                    "height": row["height"],
                    "created_at": now,
                }
            )
            self.db.execute(
                "UPDATE variations SET version_id = ? WHERE job_id = ? AND position = ?",
                [version_id, job_id, number],
            )
        return version_id

    def _job(self, job_id: str) -> dict[str, Any] | None:
        return next(
            iter(
                self.db.query(
                    "SELECT kind, state, conversation_id, source_version_id, instruction, requester_id "
                    "FROM jobs WHERE id = ?",
                    [job_id],
                )
            ),
            None,
        )
