"""Who may queue another edit: fair shares of the queue, and refusals that say when to try again.

``max_queue`` bounds how many *people* wait, not how many jobs: a person with nothing waiting
is refused only when ``max_queue`` other people are already waiting, however many jobs some
of them hold. Further jobs of one person only use the queue while it is short: the person's
n-th waiting job needs the queue under ``max_queue * (per_user_cap - n + 1) / per_user_cap``,
so backlogs shrink to one job each as the queue fills, and the queue holds at most
``max_queue`` first jobs plus fewer than ``max_queue`` further ones. ``per_user_cap`` still
bounds one person's waiting and running jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from editor.failures import QueueFull, UserLimitReached, WorkerRejected


@dataclass(frozen=True)
class Load:
    """The queue as one requester sees it when asking for another job."""

    waiting: int
    waiting_people: int
    #: This requester's waiting jobs, and whether one of theirs runs.
    mine_waiting: int
    mine_running: int
    #: 1-based place of this requester's first waiting job (None: nothing waiting).
    my_first_place: int | None
    #: How long an edit takes lately (None before the first one finished).
    run_s: float | None


def refusal(load: Load, max_queue: int, per_user_cap: int) -> WorkerRejected | None:
    """Why this requester's next job is not queued now, or None when it may be."""
    mine = load.mine_waiting + load.mine_running
    run_s = load.run_s
    if mine >= per_user_cap:
        # One of theirs ends after the running one, or after their first waiting one ran.
        turns = 1 if load.mine_running else (load.my_first_place or 1) + 1
        return UserLimitReached(
            f"You already have {mine} edit{'s' if mine != 1 else ''} waiting or running; please wait "
            f"for one to finish ({_in_about(turns, run_s)}) or cancel one."
        )
    if load.mine_waiting == 0:
        if load.waiting_people >= max_queue:
            return QueueFull(
                f"The bot is very busy right now ({load.waiting_people} people are waiting). "
                f"Please try again {_in_about(1, run_s)}."
            )
        return None
    number = load.mine_waiting + 1
    if load.waiting >= max_queue * (per_user_cap - number + 1) / per_user_cap:
        return QueueFull(
            f"The queue is busy, so for now each person can have {load.mine_waiting} edit"
            f"{'s' if load.mine_waiting != 1 else ''} waiting. Please try again once yours has started "
            f"({_in_about(load.my_first_place or 1, run_s)})."
        )
    return None


def _in_about(turns: int, run_s: float | None) -> str:
    """When ``turns`` edits of ``run_s`` seconds will have run, in words."""
    if run_s is None:
        return "in a few minutes"
    seconds = turns * run_s
    if seconds < 60:
        return f"in about {max(10, math.ceil(seconds / 10) * 10)} seconds"
    minutes = math.ceil(seconds / 60)
    if minutes < 120:
        return f"in about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"in about {math.ceil(minutes / 60)} hours"
