"""A job's life in rows: queued, running, then done (with its version), failed or cancelled.

A mixin of :class:`sessions.store.Store`, written through :mod:`sessions.writer`. A finished
edit is recorded in one transaction with its version, the original of a start job and the
source's caption and inversion, so a crash leaves none of them without the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from editor.types import EditCancelled, EditSettings, PriorEdit
from sessions.ids import new_id
from sessions.inversions import InversionCache
from sessions.models import Author, CaptionsBy, ChainMode, Job, JobKind, Place, Version
from sessions.records import EditOutcome, JobSpec, prior_edit
from sessions.schema import JOB_COLUMNS, job_from_row
from sessions.tree_rows import TreeRows


class JobRows(TreeRows):
    """The ``jobs`` table, and the versions a finished job adds."""

    inversions: InversionCache

    def add_job(
        self,
        *,
        kind: JobKind,
        requester: Author,
        instruction: str,
        settings: EditSettings,
        seed: int,
        reply_context: dict[str, Any],
        source_version_id: str | None = None,
        place: Place | None = None,
        input_png: bytes | None = None,
        input_size: tuple[int, int] | None = None,
        captions: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
        captions_by: CaptionsBy = "model",
        chain: ChainMode = "reinvert",
        previews: bool = False,
        job_id: str | None = None,
        upload_id: str | None = None,
    ) -> Job:
        """Record a queued job; a start job (``place`` and ``input_png``) opens a conversation.

        ``job_id`` is one the transport chose (its Cancel button names it), else a new one.
        ``upload_id`` names the recorded upload this job takes over, whose id it keeps: the
        upload is forgotten in the same transaction, so the request is recorded in exactly one
        place, and one cancelled while it was fetched raises EditCancelled.
        """
        now = time.time()
        with self.db.atomic():
            if upload_id is not None:
                if not self.db.execute("DELETE FROM uploads WHERE id = ?", [upload_id]).rowcount:
                    raise EditCancelled("The edit was cancelled.")
                job_id = upload_id
            if kind == "start":
                if place is None or input_png is None or input_size is None:
                    raise ValueError("a start job needs a place and an input image with its size")
                conversation_id = new_id()
                self.db.table("conversations").insert(
                    {
                        "id": conversation_id,
                        "place_key": place.key,
                        "transport": place.transport,
                        "guild_id": place.guild_id,
                        "channel_id": place.channel_id,
                        "thread_id": place.thread_id,
                        "created_at": now,
                    }
                )
            else:
                source = self.get_version(source_version_id or "")
                if source is None:
                    raise ValueError(f"no version {source_version_id!r} to edit")
                conversation_id = source.conversation_id
            job_id = job_id or new_id()
            self.db.table("jobs").insert(
                {
                    "id": job_id,
                    "conversation_id": conversation_id,
                    "requester_id": requester.id,
                    "requester_name": requester.name,
                    "source_version_id": source_version_id,
                    "kind": kind,
                    "instruction": instruction,
                    "settings": json.dumps(settings.to_dict()),
                    "seed": seed,
                    "captions": None if captions is None else json.dumps([list(c) for c in captions]),
                    "input_image": input_png,
                    "input_width": input_size[0] if input_size else None,
                    "input_height": input_size[1] if input_size else None,
                    "state": "queued",
                    "created_at": now,
                    "reply_context": json.dumps(reply_context),
                    "captions_by": captions_by,
                    "chain": chain,
                    "previews": previews,
                }
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def discard_job(self, job_id: str) -> None:
        """Forget a job the worker refused, with the conversation it alone opened."""
        with self.db.atomic():
            row = self._one("SELECT conversation_id, kind FROM jobs WHERE id = ?", [job_id])
            if row is None:
                return
            self.db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
            if row["kind"] == "start":
                self.db.execute("DELETE FROM conversations WHERE id = ?", [row["conversation_id"]])

    def get_job(self, job_id: str) -> Job | None:
        row = self._one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", [job_id])
        return None if row is None else job_from_row(row)

    def job_spec(self, job_id: str) -> JobSpec:
        """The job with the image, settings, seed and captions its request is built from."""
        job = self.get_job(job_id)
        if job is None:
            raise KeyError(job_id)
        row = self._one(
            "SELECT settings, seed, captions, input_image, chain, previews FROM jobs WHERE id = ?", [job_id]
        )
        assert row is not None
        base: Version | None = None
        prior: tuple[PriorEdit, ...] = ()
        if job.kind == "start":
            image_png, source_caption = bytes(row["input_image"]), None
        else:
            assert job.source_version_id is not None
            lineage = self.lineage(job.source_version_id)
            base = lineage[0] if row["chain"] == "compose" else lineage[-1]
            if row["chain"] == "compose":
                prior = tuple(prior_edit(version) for version in lineage[1:])
            image_png = self.image_png(base.id) or b""
            source_caption = base.image_caption
        captions = json.loads(row["captions"]) if row["captions"] else None
        return JobSpec(
            job=job,
            image_png=image_png,
            settings=EditSettings.from_dict(json.loads(row["settings"])),
            seed=row["seed"],
            source_caption=source_caption,
            captions=None if captions is None else (tuple(captions[0]), tuple(captions[1])),
            base_version_id=None if base is None else base.id,
            prior=prior,
            previews=bool(row["previews"]),
        )

    def undelivered_jobs(self) -> list[Job]:
        """Jobs that ended but whose transport has not yet told the requester, oldest first."""
        rows = self.db.query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE delivered_at IS NULL "
            "AND state IN ('done', 'failed', 'cancelled', 'interrupted') ORDER BY created_at, rowid"
        )
        return [job_from_row(row) for row in rows]

    def mark_delivered(self, job_id: str) -> None:
        self.db.execute(
            "UPDATE jobs SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL", [time.time(), job_id]
        )

    def unfinished_jobs(self) -> list[Job]:
        """Jobs left queued or running (by a crash or a stop), oldest first."""
        rows = self.db.query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, rowid"
        )
        return [job_from_row(row) for row in rows]

    def mark_running(self, job_id: str) -> None:
        """The worker started the job: count the attempt before any work is done."""
        self.db.execute(
            "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND state = 'queued'",
            [time.time(), job_id],
        )

    def requeue(self, job_id: str, *, refund_attempt: bool) -> None:
        """Put an unfinished job back in the queue.

        After a shutdown (``refund_attempt``) an interrupted run does not count; after a
        crash it does, so a job that crashes the bot every time is eventually given up.
        """
        self.db.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL, "
            "attempts = CASE WHEN ? AND state = 'running' THEN max(attempts - 1, 0) ELSE attempts END "
            "WHERE id = ? AND state IN ('queued', 'running')",
            [refund_attempt, job_id],
        )

    def finish_job(self, job_id: str, state: str, error: str | None = None) -> Job:
        """Record a job that ended without a result (failed, cancelled, interrupted)."""
        if state not in ("failed", "cancelled", "interrupted"):
            raise ValueError(f"finish_job records failures and cancels, not {state!r}")
        # A failed start keeps its upload, so nothing the user sent is lost; a cancel drops it.
        keep_input = state != "cancelled"
        self.db.execute(
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, "
            "input_image = CASE WHEN ? THEN input_image END "
            "WHERE id = ? AND state IN ('queued', 'running')",
            [state, error, time.time(), keep_input, job_id],
        )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def record_result(self, job_id: str, outcome: EditOutcome) -> Version:
        """Write a finished edit in one transaction: its version, the original of a start job,
        the source's caption and inversion, and the job's final state."""
        now = time.time()
        with self.db.atomic():
            row = self._one(
                "SELECT kind, conversation_id, requester_id, requester_name, source_version_id, "
                "instruction, settings, seed, input_image, input_width, input_height, state, "
                "captions_by, chain FROM jobs WHERE id = ?",
                [job_id],
            )
            if row is None or row["state"] not in ("queued", "running"):
                raise ValueError(f"job {job_id!r} is not waiting for a result")
            if row["kind"] == "start":
                stored = (row["input_image"], row["input_width"], row["input_height"])
                image, width, height = outcome.original or stored
                source_id = self._insert_version(
                    row,
                    now,
                    parent_id=None,
                    image=image,
                    width=width,
                    height=height,
                    image_caption=outcome.caption,
                )
            else:
                source_id = row["source_version_id"]
            # The edited image's caption and inversion: the source's, or the original's (compose).
            base_id = self.lineage(source_id)[0].id if row["chain"] == "compose" else source_id
            self.db.execute(
                "UPDATE versions SET image_caption = ? WHERE id = ? AND image_caption IS NULL",
                [outcome.caption, base_id],
            )
            version_id = self._insert_version(
                row,
                now,
                parent_id=source_id,
                instruction=row["instruction"],
                caption=outcome.caption,
                before_captions=json.dumps(list(outcome.before_captions)),
                after_captions=json.dumps(list(outcome.after_captions)),
                settings=row["settings"],
                seed=row["seed"],
                image=outcome.image_png,
                width=outcome.width,
                height=outcome.height,
                captions_by=row["captions_by"],
                notes=json.dumps(list(outcome.notes)),
            )
            if outcome.inversion is not None:
                self.inversions.put(base_id, outcome.inversion_key, outcome.inversion, now)
            self.db.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, result_version_id = ?, "
                "source_version_id = ?, input_image = NULL, error = NULL WHERE id = ?",
                [now, version_id, source_id, job_id],
            )
        version = self.get_version(version_id)
        assert version is not None
        return version

    def _insert_version(self, job: Mapping[str, Any], now: float, **columns: Any) -> str:
        """Insert a version by the job's requester in the job's conversation; return its new id."""
        version_id = new_id()
        self.db.table("versions").insert(
            {
                "id": version_id,
                "conversation_id": job["conversation_id"],
                "author_id": job["requester_id"],
                "author_name": job["requester_name"],
                "created_at": now,
                **columns,
            }
        )
        return version_id

    def job_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
