"""Status messages, and the one board through which every edit of them goes.

Discord allows about 5 message edits per 5 s in a channel. A job reports progress many times a
second, and when one job starts every queued job behind it moves up a place: without a budget a
busy channel makes dozens of edits a second and lives in rate limits. So the
:class:`StatusBoard` keeps, per status message, only the newest text (steps and queue places
coalesce), edits one message at most once per ``interval`` seconds, and spends each channel's
budget (``EDITS_PER_WINDOW`` edits per ``WINDOW_S``, shared by all statuses there) on the most
useful pending edit first: a final text, then a status's first state (it brings the Cancel
button), then progress, oldest first, and progress never takes the last ``RESERVED`` edits of
a window. Previews (a picture of the edit so far) ride on the same edits. An edit in flight is
never cancelled; the next waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import discord

from handlers.discord import render

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
#: Interaction tokens live 15 minutes; stop using one a little before that.
TOKEN_LIFETIME = datetime.timedelta(minutes=14)
#: Discord's budget of message edits per channel (about 5 per 5 s).
EDITS_PER_WINDOW = 5
WINDOW_S = 5.0
#: Edits of each window that progress leaves to firsts and finals.
RESERVED = 2
#: Times an edit Discord rate-limited (a 429 discord.py gave up on) is tried again.
RATE_LIMITED_TRIES = 3
FINAL, FIRST, PROGRESS = 0, 1, 2


class StatusMessage(Protocol):
    """A message the bot can edit; ``view=None`` removes its buttons, a view replaces them;
    ``attachments`` (a list) replaces its files, None leaves them."""

    message_id: int
    channel_id: int

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
        self.channel_id = channel_id

    async def edit(
        self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
    ) -> None:
        await self._message.edit(
            content=render.fit(content),
            view=view,
            allowed_mentions=NO_MENTIONS,
            attachments=_files(attachments),
        )


class InteractionStatus:
    """The original response of an interaction: edited with its token while it is valid."""

    def __init__(self, interaction: discord.Interaction, message_id: int, fallback: ChannelStatus) -> None:
        self._interaction = interaction
        self._fallback = fallback
        self.message_id = message_id
        self.channel_id = fallback.channel_id

    async def edit(
        self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
    ) -> None:
        content = render.fit(content)
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


@dataclass
class _Message:
    """One status message on the board: what it shows, and the newest text waiting to be shown."""

    status: StatusMessage
    shown: tuple[str, tuple[str, ...]] | None = None
    #: The preview shown now (its bytes), so an unchanged one is not uploaded again.
    shown_preview: bytes | None = None
    #: When its last edit finished (its next non-final edit waits ``interval`` after that).
    edited_at: float = float("-inf")
    #: (priority, since, text, view, preview) of the edit waiting, if any.
    pending: tuple[int, float, str, discord.ui.View | None, bytes | None] | None = None
    #: Resolved once a final text has been dealt with: True if shown (or refused for good).
    finished: asyncio.Future[bool] | None = None
    #: Its edits Discord answered with a 429 in a row (each tried again, up to RATE_LIMITED_TRIES).
    rate_limited: int = 0


@dataclass
class _Channel:
    messages: dict[int, _Message] = field(default_factory=dict)
    #: When the channel's latest edits finished (as many as its budget allows per window).
    recent: deque[float] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class StatusBoard:
    """Every status edit of the bot, within Discord's per-channel budget (see the module docstring)."""

    def __init__(
        self, interval_s: float, *, per_window: int = EDITS_PER_WINDOW, window_s: float = WINDOW_S
    ) -> None:
        self._interval = interval_s
        self._per_window = per_window
        self._window = window_s
        self._clock = time.monotonic
        self._channels: dict[int, _Channel] = {}

    def show(
        self, status: StatusMessage, text: str, view: discord.ui.View | None, preview: bytes | None = None
    ) -> None:
        """Make ``text`` (with ``view``'s buttons and the ``preview`` PNG, if any) the next thing
        the status shows; returns at once."""
        message = self._message(status)
        if message.finished is not None:
            return  # a final text is on its way: nothing shows after it
        if message.shown == (text, _view_key(view)) and message.shown_preview == preview:
            message.pending = None
            return
        priority = FIRST if message.shown is None else PROGRESS
        since = message.pending[1] if message.pending is not None else self._clock()
        message.pending = (priority, since, text, view, preview)
        self._channel(status.channel_id).wake.set()

    async def finish(self, status: StatusMessage, text: str) -> bool:
        """Show ``text`` without buttons or preview as soon as the channel's budget allows, and
        stop there.

        True once it is shown (or Discord refused it for good, say the message was deleted);
        False when it could not be sent now (Discord failing, the network down).
        """
        message = self._message(status)
        if message.finished is None:
            message.finished = asyncio.get_running_loop().create_future()
            since = message.pending[1] if message.pending is not None else self._clock()
            message.pending = (FINAL, since, text, None, None)
            self._channel(status.channel_id).wake.set()
        return await asyncio.shield(message.finished)

    async def close(self) -> None:
        for channel in self._channels.values():
            if channel.task is not None:
                channel.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await channel.task

    def _message(self, status: StatusMessage) -> _Message:
        messages = self._channel(status.channel_id).messages
        if status.message_id not in messages:
            messages[status.message_id] = _Message(status)
        return messages[status.message_id]

    def _channel(self, channel_id: int) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel(recent=deque(maxlen=self._per_window))
        if channel.task is None or channel.task.done():
            channel.task = asyncio.create_task(self._drain(channel), name=f"status-edits-{channel_id}")
        return channel

    def _ready_at(self, channel: _Channel, message: _Message, now: float) -> float:
        """When the message's pending edit may go: after its own interval (finals don't wait
        for that), once the channel's window has room; progress leaves ``RESERVED`` of the
        window to firsts and finals, so a Cancel button or an end never waits behind it."""
        assert message.pending is not None
        priority, since = message.pending[:2]
        own = since if priority == FINAL else message.edited_at + self._interval
        room = self._per_window if priority != PROGRESS else max(1, self._per_window - RESERVED)
        inside = [at for at in channel.recent if at > now - self._window]
        budget = now if len(inside) < room else inside[len(inside) - room] + self._window
        return max(own, budget)

    async def _drain(self, channel: _Channel) -> None:
        """Send the channel's pending edits, best first, one at a time, within its budget."""
        while True:
            waiting = [m for m in channel.messages.values() if m.pending is not None]
            if not waiting:
                channel.wake.clear()
                await channel.wake.wait()
                continue
            now = self._clock()
            ready_at = {id(m): self._ready_at(channel, m, now) for m in waiting}
            ready = [m for m in waiting if ready_at[id(m)] <= now]
            if not ready:
                channel.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(channel.wake.wait(), min(ready_at.values()) - now)
                continue
            await self._send(channel, min(ready, key=lambda m: (m.pending or (0, 0.0))[:2]))

    async def _send(self, channel: _Channel, message: _Message) -> None:
        assert message.pending is not None
        priority, since, text, view, preview = message.pending
        message.pending = None
        sent = True
        again = False
        files = None
        if preview != message.shown_preview:  # a new picture, or none any more
            files = [] if preview is None else [discord.File(io.BytesIO(preview), "preview.png")]
        try:
            if files is None:
                await message.status.edit(text, view)
            else:
                await message.status.edit(text, view, files)
        except discord.HTTPException as error:
            # A lost progress edit is not worth failing the job; a final one refused for good
            # (the message is gone) is done with, one Discord failed to take is not. A 429 says
            # "later": the edit goes again when the channel's budget allows, a few times.
            log.warning("could not edit status message %s: %r", message.status.message_id, error)
            sent = 400 <= error.status < 500 and error.status != 429
            again = error.status == 429 and message.rate_limited < RATE_LIMITED_TRIES
        except Exception as error:  # a dropped connection must not end the channel's edits
            log.warning("could not edit status message %s: %r", message.status.message_id, error)
            sent = False
        else:
            message.rate_limited = 0
        finally:
            message.edited_at = self._clock()
            channel.recent.append(message.edited_at)
        if again:
            message.rate_limited += 1
            if message.pending is None:  # else a newer text replaces it
                message.pending = (priority, since, text, view, preview)
            return
        message.shown, message.shown_preview = (text, _view_key(view)), preview
        if priority == FINAL and message.finished is not None:
            del channel.messages[message.status.message_id]
            if not message.finished.done():
                message.finished.set_result(sent)
