"""What a healthy conversation database looks like, checked after every kind of write and crash."""

from __future__ import annotations

from sessions.store import Store


def database_problems(store: Store) -> list[str]:
    """Integrity and consistency problems of the file (empty for a healthy database)."""
    db = store.db
    found = []
    (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
    if integrity != "ok":
        found.append(f"integrity_check: {integrity}")
    for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check").fetchall():
        found.append(f"{table} row {rowid} points at a missing {parent} row")
    for (job_id,) in db.execute(
        "SELECT id FROM jobs WHERE kind = 'start' AND input_image IS NULL "
        "AND state IN ('queued', 'running', 'failed', 'interrupted')"
    ).fetchall():
        found.append(f"start job {job_id} lost its input image")
    for (job_id,) in db.execute(
        "SELECT id FROM jobs WHERE state = 'done' AND result_version_id NOT IN (SELECT id FROM versions)"
    ).fetchall():
        found.append(f"job {job_id} is done without its version")
    for (version_id,) in db.execute(
        "SELECT id FROM versions WHERE parent_id IS NOT NULL "
        "AND id NOT IN (SELECT result_version_id FROM jobs WHERE state = 'done') "
        "AND id NOT IN (SELECT version_id FROM variations WHERE version_id IS NOT NULL)"
    ).fetchall():
        found.append(f"version {version_id} is the result of no finished job")
    return found
