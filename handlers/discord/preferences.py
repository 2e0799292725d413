"""Per-server and per-channel choices made with /settings, kept as the service's place options.

Server-wide options (edit channels, the safety check) live on one place per server whose
channel id is :data:`SERVER_WIDE`; the latest result of each channel (the default of
/history) and the grids of variations recently posted there live on that channel's place.
Server reads are cached: every message in every channel asks whether it is in an edit
channel, and only /settings changes the answer. Changes are written off the event loop, one
at a time, so two made at once both stay.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from sessions import DiscordConfig, Place

TRANSPORT = "discord"
#: Grids of variations remembered as posted, per channel: a restart delivers again only what a
#: crash caught between posting and marking the job delivered, a few at most.
POSTED_GRIDS_KEPT = 20
#: The channel id of the place holding a server's own options (no real channel has it).
SERVER_WIDE = "server"


class OptionsStore(Protocol):
    def channel_options(self, place: Place) -> dict[str, Any]: ...

    async def update_channel_options(self, place: Place, **changes: Any) -> dict[str, Any]: ...


def channel_place(guild_id: int | None, channel_id: int, thread_id: int | None = None) -> Place:
    return Place(TRANSPORT, _text(guild_id), str(channel_id), _text(thread_id))


def _text(discord_id: int | None) -> str | None:
    return None if discord_id is None else str(discord_id)


class Preferences:
    def __init__(self, store: OptionsStore, config: DiscordConfig, safety_available: bool) -> None:
        self._store = store
        self._config = config
        self._safety_available = safety_available
        self._servers: dict[str, dict[str, Any]] = {}
        #: Held from reading a server's options to writing them back, so no change is lost.
        self._changing = asyncio.Lock()

    def _server(self, guild_id: int) -> dict[str, Any]:
        key = str(guild_id)
        if key not in self._servers:
            self._servers[key] = self._store.channel_options(Place(TRANSPORT, key, SERVER_WIDE))
        return self._servers[key]

    async def _update_server(self, guild_id: int, **changes: Any) -> None:
        place = Place(TRANSPORT, str(guild_id), SERVER_WIDE)
        self._servers[str(guild_id)] = await self._store.update_channel_options(place, **changes)

    def edit_channels(self, guild_id: int) -> tuple[str, ...]:
        """The configured edit channels plus those added with /settings, configured first."""
        added = [
            c for c in self._server(guild_id).get("edit_channels", []) if c not in self._config.edit_channels
        ]
        return (*self._config.edit_channels, *added)

    def is_edit_channel(self, guild_id: int | None, channel_id: int) -> bool:
        return guild_id is not None and str(channel_id) in self.edit_channels(guild_id)

    async def set_edit_channel(self, guild_id: int, channel_id: int, enabled: bool) -> None:
        """Add or remove a channel; one configured in config.yaml stays an edit channel."""
        async with self._changing:
            stored = [c for c in self._server(guild_id).get("edit_channels", []) if c != str(channel_id)]
            if enabled:
                stored.append(str(channel_id))
            await self._update_server(guild_id, edit_channels=stored)

    def safety_check(self, guild_id: int | None) -> bool | None:
        """Whether results here are checked; None when this bot has no safety checker at all."""
        if not self._safety_available:
            return None
        if guild_id is None:
            return self._config.safety_check
        return bool(self._server(guild_id).get("safety_check", self._config.safety_check))

    async def set_safety_check(self, guild_id: int, enabled: bool) -> None:
        async with self._changing:
            await self._update_server(guild_id, safety_check=enabled)

    def latest_version(self, place: Place) -> str | None:
        return self._store.channel_options(place).get("latest_version")

    async def remember_latest(self, place: Place, version_id: str) -> None:
        await self._store.update_channel_options(place, latest_version=version_id)

    def grid_posted(self, place: Place, job_id: str) -> bool:
        """Whether the grid of a variations job was posted here (results are linked instead)."""
        return job_id in self._store.channel_options(place).get("posted_grids", [])

    async def remember_grid(self, place: Place, job_id: str) -> None:
        async with self._changing:
            posted = self._store.channel_options(place).get("posted_grids", [])
            await self._store.update_channel_options(
                place, posted_grids=[*posted, job_id][-POSTED_GRIDS_KEPT:]
            )
