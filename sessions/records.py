"""What the store reads for a job (to build its request) and writes for its result."""

from __future__ import annotations

from dataclasses import dataclass

from editor.types import EditSettings, PriorEdit
from sessions.models import Job, Version


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to (re)build a job's edit request, read in one place."""

    job: Job
    image_png: bytes
    settings: EditSettings
    seed: int
    #: The source image's BLIP caption when known (skips BLIP).
    source_caption: str | None
    #: (before, after) caption overrides, e.g. for stronger/subtler.
    captions: tuple[tuple[str, ...], tuple[str, ...]] | None
    #: The version whose image is edited and whose inversion serves: the source, or with chain
    #: mode compose the conversation's original (None for a start job).
    base_version_id: str | None = None
    #: Chain mode compose: the turns from the original to the source, applied with this edit.
    prior: tuple[PriorEdit, ...] = ()
    #: Whether the edit's place wants previews of it forming.
    previews: bool = False


@dataclass(frozen=True)
class EditOutcome:
    """What a finished edit produced, ready to be recorded."""

    image_png: bytes
    width: int
    height: int
    #: BLIP's caption of the edit's input image (the source version).
    caption: str
    before_captions: tuple[str, ...]
    after_captions: tuple[str, ...]
    #: The serialised inversion of the input image, to cache for the source version.
    inversion: bytes | None
    inversion_key: str
    #: A start job's upload as posted, normalised off the event loop: (PNG, width, height).
    #: Without it the original is the job's input image as stored.
    original: tuple[bytes, int, int] | None = None
    #: :attr:`editor.types.EditResult.notes`, for the person.
    notes: tuple[str, ...] = ()


def prior_edit(version: Version) -> PriorEdit:
    """A turn of a chain as chain mode compose applies it again."""
    assert version.settings is not None  # every version but an original was made with settings
    return PriorEdit(version.before_captions, version.after_captions, version.settings.direction_strength)
