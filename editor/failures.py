"""What the requester is told when an edit ends without an image, whatever the editor raised.

The same words for every backend: an error raised on a remote replica comes back as the
original exception and is explained here like one raised in this process.
"""

from __future__ import annotations

import logging
import sys

from editor.progress import ProgressState
from editor.types import EditCancelled, InvalidInput

logger = logging.getLogger("editor.worker")

OUT_OF_MEMORY_MESSAGE = (
    "The GPU ran out of memory on this edit. Please try a smaller image or fewer captions, "
    "or try again when the bot is less busy."
)
REPLICA_LOST_MESSAGE = (
    "The editor crashed twice while working on your edit, so it was stopped to be safe. "
    "Please try again, perhaps with fewer steps or a smaller image."
)
UNEXPECTED_ERROR_MESSAGE = (
    "Something went wrong while editing your image. The error was logged; please try again, "
    "perhaps with a different image or settings."
)


class WorkerRejected(Exception):
    """The job was not queued; the message is written for the requester."""


class QueueFull(WorkerRejected):
    """Too many people are waiting, or the queue is too busy for another job of this person."""


class UserLimitReached(WorkerRejected):
    """This requester already has as many jobs waiting or running as allowed."""


class WorkerStopping(WorkerRejected):
    """The worker is shutting down and takes no new jobs."""


class EditFailed(Exception):
    """The edit did not produce an image; ``user_message`` says why, in plain words."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class WorkerStopped(EditCancelled):
    """The worker stopped before this job could finish; :meth:`EditWorker.stop` listed its id."""


class ReplicaLost(Exception):
    """The replica running the job died or stopped answering; it is being replaced."""


def explain(
    error: BaseException, *, stop_reason: str | None, timeout_s: float, job: str
) -> tuple[ProgressState, BaseException]:
    """The final state and the error for the requester; ``stop_reason`` is why the job was told to stop.

    A job told to stop ends for that reason, even when its replica was lost on the way.
    """
    if isinstance(error, EditCancelled | ReplicaLost):
        if stop_reason == "stopped":
            return "cancelled", WorkerStopped("The editor stopped before this edit finished.")
        if stop_reason != "timeout":
            return "cancelled", EditCancelled("The edit was cancelled.")
        failure = EditFailed(
            f"Your edit took too long (over {_describe_seconds(timeout_s)}) and was stopped. "
            "Please try fewer steps or a smaller image."
        )
    elif isinstance(error, InvalidInput):
        failure = EditFailed(str(error))
    elif is_out_of_memory(error):
        logger.warning("%s ran out of GPU memory: %s", job, error)
        release_gpu_memory()
        failure = EditFailed(OUT_OF_MEMORY_MESSAGE)
    else:
        logger.error("%s failed", job, exc_info=error)
        failure = EditFailed(UNEXPECTED_ERROR_MESSAGE)
    failure.__cause__ = error
    return "failed", failure


def is_out_of_memory(error: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or a look-alike) without importing torch here."""
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__)


def release_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _describe_seconds(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} seconds"


def is_device_fault(error: BaseException) -> bool:
    """A CUDA error leaves the device unusable until the process ends (torch.AcceleratorError)."""
    return any(cls.__name__ == "AcceleratorError" for cls in type(error).__mro__) or "CUDA error" in str(
        error
    )
