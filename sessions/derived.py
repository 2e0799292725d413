"""How retry, stronger, subtler, fix and variations derive their edit from the one that made a version.

:class:`EditService` inherits these; they read the version (checked against the request's place)
and its parent, and never write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from editor.overrides import tidy_captions
from editor.types import EditSettings, InvalidInput
from sessions.errors import Rejected, UserError
from sessions.models import CaptionsBy, JobKind, Place, Version

if TYPE_CHECKING:
    from sessions.service import ServiceEditor

#: stronger / subtler multiply the edit's strength by this factor (or divide by it).
STRENGTH_STEP = 1.5


@dataclass(frozen=True)
class Edit:
    """The parts of an edit that retry, stronger and subtler keep or change."""

    instruction: str
    settings: EditSettings
    seed: int
    captions: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    captions_by: CaptionsBy = "model"


class DerivedEdits:
    """The edit a request re-runs, taken from a version and its parent."""

    _editor: ServiceEditor

    def get_version(self, version_id: str, *, place: Place) -> Version:
        raise NotImplementedError  # TreeQueries'

    def _version(self, version_id: str) -> Version:
        raise NotImplementedError  # TreeQueries'

    def _edit_of(self, version_id: str, action: str, place: Place) -> tuple[Edit, Version]:
        """How a version was made from its parent, and that parent; the original has no edit."""
        version = self.get_version(version_id, place=place)
        if (
            version.parent_id is None
            or version.instruction is None
            or version.settings is None
            or version.seed is None
        ):
            raise UserError(
                f"This is the original image, so there is no edit to {action}. "
                "Reply with an instruction to edit it."
            )
        captions = (version.before_captions, version.after_captions)
        edit = Edit(
            version.instruction,
            version.settings,
            version.seed,
            captions if all(captions) else None,
            version.captions_by,
        )
        return edit, self._version(version.parent_id)

    def _fixed(
        self, version_id: str, before: Sequence[str], after: Sequence[str], place: Place
    ) -> tuple[Edit, Version]:
        edit, parent = self._edit_of(version_id, "fix", place)
        captions = tidy_captions(before, after)
        try:
            self._editor.check_captions(captions)
        except InvalidInput as error:
            raise Rejected(str(error)) from error
        return replace(edit, captions=captions, captions_by="person"), parent

    def _rescaled(self, version_id: str, factor: float, kind: JobKind, place: Place) -> tuple[Edit, Version]:
        """The same instruction, seed and captions with the direction scaled."""
        edit, parent = self._edit_of(version_id, "make " + kind, place)
        settings = edit.settings.scaled(factor)
        if settings == edit.settings:
            limit = "strong" if factor > 1 else "subtle"
            raise Rejected(f"This edit is already as {limit} as the settings allow.")
        return replace(edit, settings=settings), parent
