"""Which version each of the bot's messages shows, including messages still on their way.

A result is linked to its version right after Discord confirms the post. A quick user (or
another bot) can reply to it, or open /history on it, in between; such a look-up waits
briefly for the bot's messages in that channel to be linked instead of answering "not a result".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import discord

from handlers.discord.preferences import TRANSPORT
from sessions import EditService, Version

#: How long a reply to a message the bot is still posting waits for it to be linked.
LINK_WAIT_S = 10.0
#: The same wait for an interaction (after it has been answered or deferred).
INTERACTION_LINK_WAIT_S = 2.0


class Links:
    """The message <-> version links of one bot, and the count of its posts not yet linked."""

    def __init__(self, bot: discord.Client, service: EditService) -> None:
        self._bot = bot
        self._service = service
        #: Messages of each channel being posted and not yet linked to their version.
        self._posting: dict[int, int] = {}
        self._posted = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def posting_in(self, channel_id: int) -> AsyncIterator[None]:
        """Mark a message of the bot as on its way until it is linked (see :meth:`link`)."""
        self._posting[channel_id] = self._posting.get(channel_id, 0) + 1
        try:
            yield
        finally:
            self._posting[channel_id] -= 1
            if not self._posting[channel_id]:
                del self._posting[channel_id]
            async with self._posted:
                self._posted.notify_all()

    async def link(self, message_id: int, version_id: str) -> None:
        """Link a posted message to the version it shows (written off the event loop)."""
        await self._service.link_message(TRANSPORT, message_id, version_id)

    async def version_of(self, message_id: int, channel_id: int | None, wait_s: float) -> Version | None:
        """The version a message shows; while the bot is still posting in ``channel_id`` (None:
        don't wait), waits up to ``wait_s`` for those messages to be linked to their versions."""
        version = self._service.version_for_message(TRANSPORT, message_id)
        if version is None and channel_id is not None and channel_id in self._posting:
            async with self._posted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._posted.wait_for(lambda: channel_id not in self._posting), wait_s
                    )
            version = self._service.version_for_message(TRANSPORT, message_id)
        return version

    async def replied_version(self, message: discord.Message) -> Version | None:
        """The version shown by the message this one replies to, if it is one of the bot's results."""
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        resolved = reference.resolved
        ours = isinstance(resolved, discord.Message) and resolved.author == self._bot.user
        return await self.version_of(reference.message_id, message.channel.id if ours else None, LINK_WAIT_S)

    async def target_version(self, target: discord.Message) -> Version | None:
        """The version a context-menu target shows (a result the bot is still linking counts)."""
        ours = self._bot.user is not None and target.author.id == self._bot.user.id
        return await self.version_of(target.id, target.channel.id if ours else None, INTERACTION_LINK_WAIT_S)
