"""Errors of the conversation service whose message is written for the person who asked.

Transports show ``str(error)`` as it is, so every message here is polite, complete and
free of internals.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user asked for cannot be done; the message says why."""


class NotFound(UserError):
    """The version, job or message the user referred to does not exist (any more)."""


class NotAllowed(UserError):
    """The user may not do this, e.g. cancel someone else's edit."""


class NothingToUndo(UserError):
    """Undo was asked of the original image, which has no parent."""


class Rejected(UserError):
    """The request was refused before it was queued: bad input, a full queue, or the per-user cap."""


class JobFailed(UserError):
    """The edit ran but could not finish (a pipeline error, a timeout, or a restart mid-edit)."""


class Postponed(UserError):
    """The bot is shutting down; the job stays queued and runs when it is back."""
