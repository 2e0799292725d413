"""The status message of a job: edited as the job moves, never faster than Discord likes.

A job reports progress many times a second; Discord rate-limits message edits. The
:class:`StatusUpdater` keeps only the latest text and sends it at most once per interval,
so the message always ends up showing the newest state without a backlog of edits. One
updater owns one status message; its lock keeps two edits of that message from crossing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import logging
import time
from typing import Protocol

import discord

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
#: Interaction tokens live 15 minutes; stop using one a little before that.
TOKEN_LIFETIME = datetime.timedelta(minutes=14)


class StatusMessage(Protocol):
    """A message the bot can edit; ``view=None`` removes its buttons, a view replaces them;
    ``attachments`` (a list) replaces its files, None leaves them."""

    message_id: int

    async def edit(
        self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
    ) -> None: ...


class ChannelStatus:
    """A status message edited through the channel (works after a restart, needs no token)."""

    def __init__(
        self, bot: discord.Client, channel_id: int, message_id: int, guild_id: int | None = None
    ) -> None:
        self._message = bot.get_partial_messageable(channel_id, guild_id=guild_id).get_partial_message(
            message_id
        )
        self.message_id = message_id

    async def edit(
        self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
    ) -> None:
        await self._message.edit(
            content=content, view=view, allowed_mentions=NO_MENTIONS, attachments=_files(attachments)
        )


class InteractionStatus:
    """The original response of an interaction: edited with its token while it is valid."""

    def __init__(self, interaction: discord.Interaction, message_id: int, fallback: ChannelStatus) -> None:
        self._interaction = interaction
        self._fallback = fallback
        self.message_id = message_id

    async def edit(
        self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
    ) -> None:
        if discord.utils.utcnow() - self._interaction.created_at < TOKEN_LIFETIME:
            if attachments is None:
                await self._interaction.edit_original_response(
                    content=content, view=view, allowed_mentions=NO_MENTIONS
                )
            else:
                await self._interaction.edit_original_response(
                    content=content, view=view, allowed_mentions=NO_MENTIONS, attachments=attachments
                )
        else:
            await self._fallback.edit(content, view, attachments)


def _files(attachments: list[discord.File] | None) -> list[discord.File]:
    """discord.py leaves a message's files as they are when given MISSING."""
    return discord.utils.MISSING if attachments is None else attachments


def _view_key(view: discord.ui.View | None) -> tuple[str, ...]:
    return tuple(str(getattr(item, "custom_id", "")) for item in view.children) if view is not None else ()


class StatusUpdater:
    """Shows the latest text on a status message, at most once per ``interval`` seconds."""

    def __init__(self, message: StatusMessage, interval: float) -> None:
        self._message = message
        self._interval = interval
        self._latest: tuple[str, discord.ui.View | None, bytes | None] | None = None
        #: The preview shown now (its bytes), so an unchanged one is not uploaded again.
        self._sent_preview: bytes | None = None
        self._sent_text: str | None = None
        self._sent_view: tuple[str, ...] | None = None
        self._sent_at = float("-inf")
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def show(self, text: str, view: discord.ui.View | None, preview: bytes | None = None) -> None:
        """Make ``text`` (with ``view``'s buttons and the ``preview`` PNG, if any) the next thing
        shown; returns at once. The preview rides on the same rate-limited edits."""
        self._latest = (text, view, preview)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"status-{self._message.message_id}")

    async def finish(self, text: str) -> None:
        """Stop updating and show ``text`` without buttons or preview, right away."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._latest = (text, None, None)
        await self._send_latest()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = self._sent_at + self._interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send_latest()

    async def _send_latest(self) -> None:
        async with self._lock:
            if self._latest is None:
                return
            text, view, preview = self._latest
            view_key = _view_key(view)
            new_preview = preview != self._sent_preview
            if text == self._sent_text and view_key == self._sent_view and not new_preview:
                return
            files = None
            if new_preview:  # a new picture, or none any more
                files = [] if preview is None else [discord.File(io.BytesIO(preview), "preview.png")]
            try:
                if files is None:
                    await self._message.edit(text, view)
                else:
                    await self._message.edit(text, view, files)
            except Exception as error:
                # A lost status edit is not worth failing the job: the next one or the result follows.
                # Not only Discord's refusals: a dropped connection (aiohttp) must not end the
                # updater, or the job's final text would never be shown.
                log.warning("could not edit status message %s: %r", self._message.message_id, error)
            self._sent_text, self._sent_view, self._sent_preview = text, view_key, preview
            self._sent_at = time.monotonic()
