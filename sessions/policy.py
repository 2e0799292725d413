"""Per-channel choices about steering that are not edit settings: who may press a result's
buttons, whether the status message shows previews, and how a chain of turns is made.

They live in a place's options (``places.options``) under one key; a thread inherits its
channel's choices and may override them, like the edit settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sessions.errors import Rejected
from sessions.models import CHAIN_MODES, ChainMode

#: The key of a place's options that holds its policy overrides.
OPTION = "policy"


@dataclass(frozen=True)
class ChannelPolicy:
    #: ``reinvert``: a turn inverts the previous result; ``compose``: the lineage's directions
    #: summed on the conversation's first inversion (no drift, no inversion after turn one).
    chain: ChainMode = "reinvert"
    #: A small picture of the edit forming on the status message while it runs.
    previews: bool = True
    #: Only the requester (and moderators) may press a result's buttons.
    requester_only: bool = False

    def merged(self, overrides: Mapping[str, Any]) -> ChannelPolicy:
        known = {field.name for field in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if k in known})


def checked_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The changes, or Rejected naming the first unknown choice or bad value (None resets one)."""
    kinds = {field.name: field.type for field in dataclasses.fields(ChannelPolicy)}
    for name, value in changes.items():
        if name not in kinds:
            raise Rejected(f"Unknown channel option {name!r}. Known: {', '.join(kinds)}.")
        if value is None:
            continue
        if name == "chain" and value not in CHAIN_MODES:
            raise Rejected(f"`chain` must be one of {', '.join(CHAIN_MODES)}, got {value!r}.")
        if name != "chain" and not isinstance(value, bool):
            raise Rejected(f"`{name}` must be true or false, got {value!r}.")
    return dict(changes)
