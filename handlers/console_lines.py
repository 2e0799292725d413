"""How the console chat words a version and an edit's progress, one line each."""

from __future__ import annotations

from sessions import Progress, Version

#: Progress lines printed per stage: at each quarter of its steps.
PROGRESS_QUARTERS = 4


def describe(version: Version) -> str:
    if version.instruction is None:
        return f"the original, from {version.author_name}"
    deleted = " (deleted)" if version.is_deleted else ""
    return f"“{version.instruction}” by {version.author_name}{deleted}"


def progress_mark(update: Progress) -> tuple[str | None, int]:
    """What a printed line stands for: the state or stage, and the quarter reached."""
    if update.state == "queued":
        return ("queued", update.queue_position or 0)
    if update.state != "running" or not update.total:
        return (update.stage or update.state, 0)
    return (update.stage, update.step * PROGRESS_QUARTERS // update.total)


def progress_line(update: Progress) -> str:
    if update.state == "queued":
        return f"  waiting, number {update.queue_position} in the queue"
    if update.state == "running" and update.stage and update.total:
        return f"  {update.stage}: {update.step}/{update.total} ({100 * update.step // update.total}%)"
    return f"  {update.state}"
