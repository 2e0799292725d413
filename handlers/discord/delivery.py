"""Following a job from its queueing to its posted result, and delivering what a crash left.

A request is first answered with a status message (:class:`Received`); then the job is
submitted with a ``reply_context`` naming where to report (:class:`Destination`), its status
message follows it through the :class:`~handlers.discord.status.StatusBoard`, and its result is
posted as a reply with its buttons, or the status turned into the reason it failed. Only then
is the job marked delivered (``EditService.outbox``): a job a crash left undelivered comes back
at start-up, and is delivered then (its result posted unless a message already shows it, its
status finished). The reply context is what lets that happen after a restart. A result Discord
fails to take is tried again a few times; if Discord still fails, the status says so and the job
stays undelivered, so the next start posts it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import discord

from handlers.discord import render
from handlers.discord.errors import NO_MENTIONS, is_transient, user_message
from handlers.discord.links import Links
from handlers.discord.moderation import SafetyChecker
from handlers.discord.preferences import TRANSPORT, Preferences, channel_place
from handlers.discord.status import ChannelStatus, StatusBoard, StatusMessage
from handlers.discord.views import cancel_view, pick_view, result_view
from sessions import Author, EditCancelled, EditService, Job, Place, Postponed, Ticket, VariationSet, Version

log = logging.getLogger(__name__)

WITHHELD = (
    "the result was withheld: the safety check flagged it as possibly unsafe. Try a different instruction."
)
CHECK_FAILED = "the result was withheld because the safety check could not run. The error was logged."
UNPOSTED = (
    "I couldn't post your result because Discord isn't answering. It is kept: "
    "I'll post it here when I restart."
)
#: The waits before each new try of a post Discord failed to take (see ``errors.is_transient``).
POST_RETRY_DELAYS_S: tuple[float, ...] = (2.0, 8.0, 30.0)


@dataclass(frozen=True)
class Destination:
    """Where one job reports: its channel, the message the result replies to, its status message
    and that message's channel (another one when the result goes to a thread opened after it)."""

    channel_id: int
    guild_id: int | None
    reply_to: int | None
    status_message_id: int | None
    #: None: the status message is in ``channel_id``.
    status_channel_id: int | None = None

    @property
    def place(self) -> Place:
        """The place requests from here are made in (the server, or the private chat)."""
        return channel_place(self.guild_id, self.channel_id)

    def status(self, bot: discord.Client) -> ChannelStatus | None:
        """The status message, edited through its channel (after a restart: no token needed)."""
        if self.status_message_id is None:
            return None
        channel_id = self.status_channel_id or self.channel_id
        return ChannelStatus(bot, channel_id, self.status_message_id, self.guild_id)

    def to_context(self) -> dict[str, Any]:
        return {
            "transport": TRANSPORT,
            "channel_id": str(self.channel_id),
            "guild_id": _text(self.guild_id),
            "reply_to": _text(self.reply_to),
            "status_message_id": _text(self.status_message_id),
            "status_channel_id": _text(self.status_channel_id),
        }

    @classmethod
    def from_context(cls, context: dict[str, Any]) -> Destination | None:
        """None for a job another transport started (e.g. the console)."""
        if context.get("transport") != TRANSPORT or not context.get("channel_id"):
            return None

        def number(key: str) -> int | None:
            value = context.get(key)
            return None if value is None else int(value)

        return cls(
            int(context["channel_id"]),
            number("guild_id"),
            number("reply_to"),
            number("status_message_id"),
            number("status_channel_id"),  # absent from contexts written before it was kept
        )


def _text(discord_id: int | None) -> str | None:
    return None if discord_id is None else str(discord_id)


@dataclass(frozen=True)
class Received:
    """A request answered with its status message: where its job will report, or why none runs."""

    author: Author
    instruction: str
    status: StatusMessage
    destination: Destination
    #: The id its job will have (the status's Cancel button names it from the start).
    job_id: str


class Delivery:
    """Submits jobs, follows each on its own task, posts the results and marks them delivered."""

    def __init__(
        self,
        bot: discord.Client,
        service: EditService,
        links: Links,
        *,
        preferences: Preferences,
        safety: SafetyChecker | None,
        progress_interval_s: float,
    ) -> None:
        self._bot = bot
        self._service = service
        self._links = links
        self._preferences = preferences
        self._safety = safety
        self.post_retry_delays_s = POST_RETRY_DELAYS_S
        #: Every status edit of the bot goes through it (Discord's per-channel budget).
        self.board = StatusBoard(progress_interval_s)
        self._followers: set[asyncio.Task[None]] = set()

    async def fail(self, received: Received, error: BaseException) -> bool:
        """The status message says why the request ends here (no job was queued); False when
        Discord could not be told now (see ``StatusBoard.finish``)."""
        author, instruction = received.author.id, received.instruction
        if isinstance(error, EditCancelled):  # cancelled while its image was on its way
            text = render.cancelled_text(author, instruction)
        else:
            text = render.failed_text(author, instruction, user_message(error))
        return await self.board.finish(received.status, text)

    async def submit(
        self, received: Received, request: Callable[..., Awaitable[Ticket[Any]]], *args: Any, **kwargs: Any
    ) -> None:
        """``await request(*args, reply_context=..., job_id=..., **kwargs)`` queues the job (a new
        conversation's ``upload_id`` is its job id); a refusal (full queue, per-user cap, bad image)
        becomes the status text (and a recorded upload is dropped once that is shown: until then
        the next start takes it up again), else the job is followed."""
        if "upload_id" not in kwargs:
            kwargs["job_id"] = received.job_id
        try:
            ticket = await request(*args, reply_context=received.destination.to_context(), **kwargs)
        except Exception as error:
            told = await self.fail(received, error)
            if told and kwargs.get("upload_id") is not None:
                await self._service.outbox.drop_upload(kwargs["upload_id"])
            return
        self._spawn(self.follow(ticket, received.status, received.destination))

    def recovered(self, ticket: Ticket[Any]) -> None:
        """A job a restart left undelivered: follow it to the place its reply context names.

        Every transport hears of every such job: another's is left alone; one of ours whose
        context says nowhere usable is marked delivered (it would come back at every start).
        """
        job = ticket.job
        if job.reply_context.get("transport") != TRANSPORT:
            return
        try:
            destination = Destination.from_context(job.reply_context)
        except (TypeError, ValueError):
            destination = None
        if destination is None:
            log.warning("job %s can't be delivered, its reply context is %r", job.id, job.reply_context)
            self._spawn(self._service.outbox.mark_delivered(job.id))
            return
        self._spawn(self.follow(ticket, destination.status(self._bot), destination))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a delivery on its own task, which :meth:`close` lets finish."""
        self._spawn(coroutine)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def follow(
        self, ticket: Ticket[Any], status: StatusMessage | None, destination: Destination
    ) -> None:
        """Show the job's progress on its status, post its result, finish the status, mark it delivered."""
        job = ticket.job
        watcher = asyncio.create_task(self._watch(ticket, status)) if status is not None else None
        owed = False  # True: the next start delivers it
        try:
            made = await ticket.result()
        except Postponed as error:
            owed = True  # still queued
            final = render.failed_text(job.requester_id, job.instruction, user_message(error))
        except EditCancelled:
            final = render.cancelled_text(job.requester_id, job.instruction)
        except Exception as error:
            final = render.failed_text(job.requester_id, job.instruction, user_message(error))
        else:
            try:
                final = await self._deliver(made, destination, job)
            except Exception as error:
                if is_transient(error):  # still failing after the retries: the result is kept
                    log.warning("could not post the result of job %s: %r", job.id, error)
                    owed = True
                    final = render.failed_text(job.requester_id, job.instruction, UNPOSTED)
                else:
                    final = render.failed_text(job.requester_id, job.instruction, user_message(error))
        finally:
            if watcher is not None:
                watcher.cancel()
                try:
                    await watcher
                except asyncio.CancelledError:
                    pass
                except Exception:
                    # Progress is a courtesy: the final text below must still be shown.
                    log.exception("following the progress of job %s failed", job.id)
        shown = status is None or await self.board.finish(status, final)
        if shown and not owed:
            await self._service.outbox.mark_delivered(job.id)

    async def _watch(self, ticket: Ticket[Any], status: StatusMessage) -> None:
        job = ticket.job
        view = cancel_view(job.id)
        async for progress in ticket.progress():
            if not progress.final:
                text = render.status_text(progress, job.requester_id, job.instruction)
                self.board.show(status, text, view, progress.preview)

    async def _deliver(self, made: Version | VariationSet, destination: Destination, job: Job) -> str:
        """Post the result or the grid of variations (after the safety check, when on), unless a
        message already shows it (a restart after posting: neither checked nor posted again);
        the status message's final text."""
        requester_id, instruction, place = job.requester_id, job.instruction, destination.place
        if isinstance(made, VariationSet):
            if not self._preferences.grid_posted(place, made.job_id):
                png = await self._service.variation_grid(made.job_id, place=place)
                if reason := await self._withheld(made, png, destination.guild_id):
                    return render.failed_text(requester_id, instruction, reason)
                await self._retrying(lambda: self.send_variations(destination, made, png))
                await self._preferences.remember_grid(place, made.job_id)
        elif not self._service.outbox.is_posted(TRANSPORT, made.id):
            png = self._service.image_png(made.id, place=place)
            if reason := await self._withheld(made, png, destination.guild_id):
                return render.failed_text(requester_id, instruction, reason)
            await self._retrying(
                lambda: self.send_version(destination, made, lambda note: render.result_text(made, note))
            )
            await self._preferences.remember_latest(place, made.id)
        return render.done_text(requester_id, instruction, time.time() - job.created_at)

    async def _withheld(self, made: Version | VariationSet, png: bytes, guild_id: int | None) -> str | None:
        """Why the safety check (when on here) keeps ``png`` from being posted, if it does."""
        if not self._preferences.safety_check(guild_id):
            return None
        if self._safety is None:
            return CHECK_FAILED
        try:
            unsafe = await self._safety.is_unsafe(png)
        except Exception:
            log.exception("the safety check failed on %s", made)
            return CHECK_FAILED
        if unsafe:
            log.info("%s withheld by the safety check", made)
            return WITHHELD
        return None

    async def _retrying(self, post: Callable[[], Awaitable[None]]) -> None:
        """``await post()``, tried again after each of ``post_retry_delays_s`` while it fails in
        a way that may pass (:func:`~handlers.discord.errors.is_transient`); then its error."""
        for delay in self.post_retry_delays_s:
            try:
                await post()
                return
            except Exception as error:
                if not is_transient(error):
                    raise
                log.warning("posting a result failed (%r); trying again in %.1f s", error, delay)
            await asyncio.sleep(delay)
        await post()

    def _channel_and_reference(
        self, destination: Destination
    ) -> tuple[discord.PartialMessageable, discord.MessageReference | None]:
        """Where a result goes, and the message it answers (if that message may be gone, still post)."""
        channel = self._bot.get_partial_messageable(destination.channel_id, guild_id=destination.guild_id)
        if destination.reply_to is None:
            return channel, None
        return channel, discord.MessageReference(
            message_id=destination.reply_to,
            channel_id=destination.channel_id,
            guild_id=destination.guild_id,
            fail_if_not_exists=False,
        )

    async def send_variations(self, destination: Destination, made: VariationSet, grid: bytes) -> None:
        """Post the grid of variations with a button per variation to pick it."""
        channel, reference = self._channel_and_reference(destination)
        fitted = await fit_image(grid, self._upload_limit(destination.guild_id), f"variations-{made.job_id}")
        await channel.send(
            render.fit(render.variations_text(made, fitted.note)),
            file=discord.File(io.BytesIO(fitted.data), fitted.filename),
            view=pick_view(made.job_id, len(made.variations)),
            reference=reference,  # type: ignore[arg-type]
            allowed_mentions=NO_MENTIONS,
        )

    async def send_version(
        self, destination: Destination, version: Version, text_for: Callable[[str], str]
    ) -> None:
        """Post a version's image in the channel (fitted to the upload limit) and link the message.

        A 413 from Discord (its limit was lower than it said) is retried once at half the size;
        sending again is safe then, since nothing was posted.
        """
        channel, reference = self._channel_and_reference(destination)

        async def send(fitted: render.FittedImage) -> discord.Message:
            return await channel.send(
                render.fit(text_for(fitted.note)),
                file=discord.File(io.BytesIO(fitted.data), fitted.filename),
                # discord.py's overloads of send() leave out the None (no buttons, no reply) it takes.
                view=result_view(version),  # type: ignore[arg-type]
                reference=reference,  # type: ignore[arg-type]
                allowed_mentions=NO_MENTIONS,
            )

        png = self._service.image_png(version.id, place=destination.place)
        stem = f"edit-{version.id}"
        async with self._links.posting_in(destination.channel_id):
            fitted = await fit_image(png, self._upload_limit(destination.guild_id), stem)
            try:
                message = await send(fitted)
            except discord.HTTPException as error:
                if error.status != 413:
                    raise
                message = await send(await fit_image(png, len(fitted.data) // 2, stem))
            await self._links.link(message.id, version.id)

    def _upload_limit(self, guild_id: int | None) -> int:
        guild = self._bot.get_guild(guild_id) if guild_id is not None else None
        return guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def close(self, grace_s: float = 10.0) -> None:
        """Let followers finish reporting (the stopped service ends their jobs), then stop them.

        Whatever they could not finish stays undelivered, for the next start.
        """
        if self._followers:
            _, pending = await asyncio.wait(set(self._followers), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.board.close()
        if self._safety is not None:
            self._safety.close()


async def respond_with_image(
    interaction: discord.Interaction,
    png: bytes,
    stem: str,
    text: str,
    view: discord.ui.View | None = discord.utils.MISSING,
) -> discord.InteractionMessage:
    """Turn a deferred interaction's answer into ``text`` with the image, fitted to its upload limit."""
    fitted = await fit_image(png, interaction.filesize_limit, stem)
    return await interaction.edit_original_response(
        content=render.with_note(text, fitted.note),
        attachments=[discord.File(io.BytesIO(fitted.data), fitted.filename)],
        view=view,
        allowed_mentions=NO_MENTIONS,
    )


async def fit_image(png: bytes, limit: int, stem: str) -> render.FittedImage:
    """``render.fit_image``, on a thread when it has to re-encode (seconds for a large image)."""
    if len(png) <= limit:
        return render.fit_image(png, limit, stem)
    return await asyncio.to_thread(render.fit_image, png, limit, stem)
