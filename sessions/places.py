"""A place's own choices: edit-setting overrides, the transports' options, the steering policy.

:class:`EditService` inherits these; they need only the store, its writer and the editor's
defaults and templates. A thread inherits its channel's choices and may override them. Reads
use the loop's connection; changes go through :mod:`sessions.writer`, so a slash command never
waits on the database lock while a job's result is being written.
"""

from __future__ import annotations

from typing import Any

from editor.types import EditSettings, InvalidInput
from sessions.errors import Rejected
from sessions.models import Place
from sessions.policy import OPTION as POLICY_OPTION
from sessions.policy import ChannelPolicy, checked_changes
from sessions.store import Store
from sessions.writer import Writer


class PlaceChoices:
    """Per-place settings, options and policy over the store."""

    def __init__(
        self, store: Store, writer: Writer, defaults: EditSettings, templates: tuple[str, ...]
    ) -> None:
        self._store = store
        self._writer = writer
        self._defaults = defaults
        self._templates = templates

    @property
    def defaults(self) -> EditSettings:
        """The edit settings of a place without overrides."""
        return self._defaults

    @property
    def templates(self) -> tuple[str, ...]:
        """The prompt templates a place's ``template`` setting may name."""
        return self._templates

    def channel_settings(self, place: Place) -> EditSettings:
        """The defaults with the place's overrides (unknown old overrides are ignored).

        A thread inherits its channel's overrides and may override them again.
        """
        known = self.defaults.to_dict()
        layers = [place] if place.parent is None else [place.parent, place]
        overrides = {
            name: value
            for layer in layers
            for name, value in self._store.place_settings(layer).items()
            if name in known
        }
        return self.defaults.replace(**overrides)

    async def update_channel_settings(self, place: Place, **changes: Any) -> EditSettings:
        """Override settings for a place; a value of None goes back to the default."""
        unknown = sorted(set(changes) - set(self.defaults.to_dict()))
        if unknown:
            raise Rejected(
                f"Unknown setting(s): {', '.join(unknown)}. Known: {', '.join(self.defaults.to_dict())}."
            )
        current = self.channel_settings(place)
        candidate = current.replace(**{name: value for name, value in changes.items() if value is not None})
        try:
            candidate.validate(self.templates)
        except InvalidInput as error:
            raise Rejected(str(error)) from error
        await self._writer.run(lambda store: store.update_place(place, "settings", changes))
        return self.channel_settings(place)

    def channel_options(self, place: Place) -> dict[str, Any]:
        """Free-form per-place state for transports (e.g. an edit-channel flag)."""
        return self._store.place_options(place)

    async def update_channel_options(self, place: Place, **changes: Any) -> dict[str, Any]:
        """Merge JSON-serialisable options into a place's; a value of None removes one."""
        return await self._writer.run(lambda store: store.update_place(place, "options", changes))

    def channel_policy(self, place: Place) -> ChannelPolicy:
        """Who may press buttons, previews, chain mode: the place's (a thread inherits its channel's)."""
        layers = [place] if place.parent is None else [place.parent, place]
        policy = ChannelPolicy()
        for layer in layers:
            policy = policy.merged(self._store.place_options(layer).get(POLICY_OPTION, {}))
        return policy

    async def update_channel_policy(self, place: Place, **changes: Any) -> ChannelPolicy:
        """Change a place's policy; a value of None goes back to the default."""
        checked = checked_changes(changes)

        def merge(store: Store) -> None:  # on the writer, so two changes at once both stay
            current = dict(store.place_options(place).get(POLICY_OPTION, {}))
            for name, value in checked.items():
                if value is None:
                    current.pop(name, None)
                else:
                    current[name] = value
            store.update_place(place, "options", {POLICY_OPTION: current})

        await self._writer.run(merge)
        return self.channel_policy(place)
