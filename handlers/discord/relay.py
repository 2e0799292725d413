"""The flows between Discord and the conversation service.

Cogs and buttons only call in here; the service owns every decision about conversations.
Every request follows the same life: an answer at once (a status message, or a modal),
then the job submitted with a ``reply_context`` naming where to report, the status message
edited as the job moves (see ``status.py``), and finally the result posted as a reply with
its buttons, or the status message turned into the reason it failed. The ``reply_context``
lets a job recovered after a restart report to the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import discord

from editor.config import LimitsConfig
from editor.types import EditCancelled
from handlers.discord import render
from handlers.discord.config import DiscordConfig
from handlers.discord.errors import NO_MENTIONS, BadRequest, report, user_message
from handlers.discord.moderation import InstructionFilter, SafetyChecker
from handlers.discord.preferences import TRANSPORT, Preferences, channel_place
from handlers.discord.status import ChannelStatus, InteractionStatus, StatusMessage, StatusUpdater
from handlers.discord.views import InstructionModal, cancel_view, result_view
from sessions.models import Author, Place, Version
from sessions.service import EditService, Ticket

log = logging.getLogger(__name__)

#: How long a reply to a message the bot is still posting waits for it to be linked.
LINK_WAIT_S = 10.0
#: The same wait for an interaction, which must be answered within 3 s.
INTERACTION_LINK_WAIT_S = 2.0
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
UNDO_WORDS = frozenset({"undo", "go back", "back", "revert"})
#: Thread names are limited to 100 characters by Discord.
THREAD_NAME_CHARS = 90
WITHHELD = (
    "the result was withheld: the safety check flagged it as possibly unsafe. Try a different instruction."
)
CHECK_FAILED = "the result was withheld because the safety check could not run. The error was logged."
NO_INSTRUCTION = (
    "What should I change? Send the image again with an instruction in the same message, "
    "e.g. *make it snowy*."
)
REPLY_HINT = (
    "What should I change? Reply to the result again with an instruction, e.g. *make it snowy*, "
    "or `undo` to go back a step."
)
MENTION_HINT = (
    "Attach an image and tell me what to change (e.g. *make it snowy*), or reply to one of my "
    "results with the next change. `/help` explains more."
)


@dataclass(frozen=True)
class Destination:
    """Where one job reports: its channel, the message the result replies to, its status message."""

    channel_id: int
    guild_id: int | None
    reply_to: int | None
    status_message_id: int | None

    def to_context(self) -> dict[str, Any]:
        return {
            "transport": TRANSPORT,
            "channel_id": str(self.channel_id),
            "guild_id": None if self.guild_id is None else str(self.guild_id),
            "reply_to": None if self.reply_to is None else str(self.reply_to),
            "status_message_id": None if self.status_message_id is None else str(self.status_message_id),
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
            int(context["channel_id"]), number("guild_id"), number("reply_to"), number("status_message_id")
        )


def place_of(channel: Any, guild_id: int | None) -> Place:
    """The service's place of a channel: a thread is a place of its own inside its parent."""
    if isinstance(channel, discord.Thread):
        return channel_place(guild_id, channel.parent_id, channel.id)
    return channel_place(guild_id, channel.id)


def is_image(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        return content_type.startswith("image/")
    return PurePosixPath(attachment.filename.lower()).suffix in IMAGE_SUFFIXES


class Relay:
    """Every flow of the bot, from a Discord event to the service and back to the channel."""

    def __init__(
        self,
        bot: discord.Client,
        service: EditService,
        *,
        config: DiscordConfig,
        limits: LimitsConfig,
        preferences: Preferences,
        safety: SafetyChecker | None,
    ) -> None:
        self._bot = bot
        self._service = service
        self._config = config
        self._limits = limits
        self._preferences = preferences
        self._filter = InstructionFilter(config.blocked_words, config.blocked_patterns)
        self._safety = safety
        self._followers: set[asyncio.Task[None]] = set()
        #: Messages of each channel being posted and not yet linked to their version.
        self._posting: dict[int, int] = {}
        self._posted = asyncio.Condition()

    # --- authors, limits ---------------------------------------------------------------

    @staticmethod
    def author_of_message(message: discord.Message) -> Author:
        """The sender; a moderator is someone who may manage messages in that channel."""
        user = message.author
        moderator = False
        if isinstance(user, discord.Member) and isinstance(
            message.channel, discord.abc.GuildChannel | discord.Thread
        ):
            moderator = message.channel.permissions_for(user).manage_messages
        return Author(str(user.id), user.display_name, moderator)

    @staticmethod
    def author_of_interaction(interaction: discord.Interaction) -> Author:
        user = interaction.user
        moderator = interaction.guild_id is not None and interaction.permissions.manage_messages
        return Author(str(user.id), user.display_name, moderator)

    def _channel_upload_limit(self, guild_id: int | None) -> int:
        guild = self._bot.get_guild(guild_id) if guild_id is not None else None
        return guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    def _check_instruction(self, instruction: str) -> str:
        instruction = " ".join(instruction.split())
        if not instruction:
            raise BadRequest(NO_INSTRUCTION)
        self._filter.check(instruction)
        return instruction

    def _check_attachment(self, attachment: discord.Attachment) -> None:
        if not is_image(attachment):
            raise BadRequest(
                f"`{discord.utils.escape_markdown(attachment.filename)}` is not an image I can edit. "
                "Please attach a PNG, JPEG, WebP or GIF."
            )
        if attachment.size > self._limits.max_input_bytes:
            raise BadRequest(
                f"That image is {render.describe_bytes(attachment.size)}; the most I accept is "
                f"{render.describe_bytes(self._limits.max_input_bytes)}. Please send a smaller one."
            )

    async def _download(self, attachment: discord.Attachment) -> bytes:
        try:
            return await attachment.read()
        except discord.HTTPException as error:
            log.warning("downloading attachment %s failed: %s", attachment.id, error)
            raise BadRequest(
                "I couldn't download that image from Discord; please upload it again."
            ) from error

    # --- messages -----------------------------------------------------------------------

    def _addressed(self, message: discord.Message) -> bool:
        """A DM, a mention of the bot, or a message in an edit channel (or a thread of one)."""
        if message.guild is None or self._bot.user in message.mentions:
            return True
        channel = message.channel
        channel_id = channel.parent_id if isinstance(channel, discord.Thread) else channel.id
        return self._preferences.is_edit_channel(message.guild.id, channel_id)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def _posting_in(self, channel_id: int) -> AsyncIterator[None]:
        """Mark a message of the bot as on its way until it is linked to its version."""
        self._posting[channel_id] = self._posting.get(channel_id, 0) + 1
        try:
            yield
        finally:
            self._posting[channel_id] -= 1
            if not self._posting[channel_id]:
                del self._posting[channel_id]
            async with self._posted:
                self._posted.notify_all()

    async def _replied_version(self, message: discord.Message) -> Version | None:
        """The version shown by the message this one replies to, if it is one of the bot's results.

        A quick user (or another bot) can reply before the bot has linked a message it has
        just posted; such a reply waits for the bot's messages in that channel to be linked.
        """
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        resolved = reference.resolved
        ours = isinstance(resolved, discord.Message) and resolved.author == self._bot.user
        return await self._linked_version(
            message.channel.id if ours else None, reference.message_id, LINK_WAIT_S
        )

    async def _linked_version(self, channel_id: int | None, message_id: int, wait_s: float) -> Version | None:
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

    async def on_message(self, message: discord.Message) -> None:
        """Decide what a message asks for; most messages ask nothing of the bot."""
        if message.author.bot or message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        assert self._bot.user is not None
        text = render.without_bot_mention(message.content, self._bot.user.id)
        try:
            replied_version = await self._replied_version(message)
            if message.attachments and self._addressed(message):
                await self._new_edit_from_message(message, text)
            elif replied_version is not None and text:
                if text.lower().strip(" .!") in UNDO_WORDS:
                    await self._undo_from_message(message, replied_version)
                else:
                    await self._continue_from_message(message, replied_version, text)
            elif self._bot.user in message.mentions:
                # A mention with nothing to do: say how (a reply to a result needs an instruction).
                hint = MENTION_HINT if replied_version is None else REPLY_HINT
                await message.reply(hint, mention_author=False, allowed_mentions=NO_MENTIONS)
        except Exception as error:
            await report(message, error)

    async def _new_edit_from_message(self, message: discord.Message, text: str) -> None:
        attachment = next((a for a in message.attachments if is_image(a)), message.attachments[0])
        self._check_attachment(attachment)
        instruction = self._check_instruction(text)
        author = self.author_of_message(message)
        guild_id = message.guild.id if message.guild else None
        channel: Any = message.channel
        reply_to: int | None = message.id
        if self._config.open_threads and isinstance(channel, discord.TextChannel):
            channel = await message.create_thread(name=instruction[:THREAD_NAME_CHARS])
            reply_to = None  # the thread starts from the request; replies cannot cross channels
        status = await self._post_received(channel, guild_id, reply_to, author, instruction)
        try:
            image = await self._download(attachment)
        except BadRequest as error:
            await status.edit(render.failed_text(author.id, instruction, str(error)), None)
            return
        destination = Destination(channel.id, guild_id, reply_to, status.message_id)
        place = place_of(channel, guild_id)
        await self._submit(
            lambda ctx: self._service.start_edit(place, author, image, instruction, reply_context=ctx),
            status,
            destination,
            author,
            instruction,
        )

    async def _continue_from_message(self, message: discord.Message, version: Version, text: str) -> None:
        instruction = self._check_instruction(text)
        author = self.author_of_message(message)
        guild_id = message.guild.id if message.guild else None
        status = await self._post_received(message.channel, guild_id, message.id, author, instruction)
        destination = Destination(message.channel.id, guild_id, message.id, status.message_id)
        await self._submit(
            lambda ctx: self._service.continue_edit(version.id, author, instruction, reply_context=ctx),
            status,
            destination,
            author,
            instruction,
        )

    async def _undo_from_message(self, message: discord.Message, version: Version) -> None:
        parent = self._service.undo(version.id)
        guild_id = message.guild.id if message.guild else None
        destination = Destination(message.channel.id, guild_id, message.id, None)
        text = render.undo_text(parent, version, str(message.author.id))
        await self._send_version(destination, parent, lambda note: _with_note(text, note))

    async def _post_received(
        self, channel: Any, guild_id: int | None, reply_to: int | None, author: Author, instruction: str
    ) -> ChannelStatus:
        reference = None
        if reply_to is not None:
            reference = discord.MessageReference(
                message_id=reply_to, channel_id=channel.id, guild_id=guild_id, fail_if_not_exists=False
            )
        sent = await channel.send(
            render.received_text(author.id, instruction), reference=reference, allowed_mentions=NO_MENTIONS
        )
        return ChannelStatus(self._bot, channel.id, sent.id, guild_id)

    # --- interactions --------------------------------------------------------------------

    async def _respond_received(
        self, interaction: discord.Interaction, author: Author, instruction: str
    ) -> InteractionStatus:
        """The interaction's answer is the job's status message, in the channel for all to see."""
        response = await interaction.response.send_message(
            render.received_text(author.id, instruction), allowed_mentions=NO_MENTIONS
        )
        message_id = response.message_id
        assert message_id is not None
        assert interaction.channel_id is not None
        fallback = ChannelStatus(self._bot, interaction.channel_id, message_id, interaction.guild_id)
        return InteractionStatus(interaction, message_id, fallback)

    async def _thread_for(self, interaction: discord.Interaction, instruction: str) -> discord.Thread | None:
        """With ``open_threads``, a thread started from the status message of a new conversation."""
        if not (self._config.open_threads and isinstance(interaction.channel, discord.TextChannel)):
            return None
        original = await interaction.original_response()
        return await original.create_thread(name=instruction[:THREAD_NAME_CHARS])

    async def edit_command(
        self, interaction: discord.Interaction, attachment: discord.Attachment, instruction: str
    ) -> None:
        """/edit image instruction."""
        self._check_attachment(attachment)
        instruction = self._check_instruction(instruction)
        await self._start_from_interaction(interaction, instruction, attachment=attachment)

    async def open_modal(self, interaction: discord.Interaction, target: discord.Message) -> None:
        """The "Edit image" menu: ask for the instruction (a result of ours, or a message with an image)."""
        is_result = await self._target_version(target) is not None
        if not is_result:
            if not target.attachments:
                raise BadRequest("That message has no image I can edit.")
            self._check_attachment(
                next((a for a in target.attachments if is_image(a)), target.attachments[0])
            )
        await interaction.response.send_modal(InstructionModal(target, self._limits.max_instruction_chars))

    async def _target_version(self, target: discord.Message) -> Version | None:
        """The version a context-menu target shows (a result the bot is still linking counts)."""
        ours = self._bot.user is not None and target.author.id == self._bot.user.id
        return await self._linked_version(
            target.channel.id if ours else None, target.id, INTERACTION_LINK_WAIT_S
        )

    async def edit_from_modal(
        self, interaction: discord.Interaction, target: discord.Message, text: str
    ) -> None:
        instruction = self._check_instruction(text)
        version = await self._target_version(target)
        if version is not None:
            author = self.author_of_interaction(interaction)
            status = await self._respond_received(interaction, author, instruction)
            await self._submit(
                lambda ctx: self._service.continue_edit(version.id, author, instruction, reply_context=ctx),
                status,
                self._interaction_destination(interaction, status),
                author,
                instruction,
            )
            return
        attachment = next((a for a in target.attachments if is_image(a)), target.attachments[0])
        await self._start_from_interaction(interaction, instruction, attachment=attachment)

    def _interaction_destination(
        self, interaction: discord.Interaction, status: StatusMessage
    ) -> Destination:
        assert interaction.channel_id is not None
        return Destination(interaction.channel_id, interaction.guild_id, status.message_id, status.message_id)

    async def _start_from_interaction(
        self, interaction: discord.Interaction, instruction: str, *, attachment: discord.Attachment
    ) -> None:
        author = self.author_of_interaction(interaction)
        status = await self._respond_received(interaction, author, instruction)
        destination = self._interaction_destination(interaction, status)
        place = place_of(interaction.channel, interaction.guild_id)
        try:
            thread = await self._thread_for(interaction, instruction)
        except discord.HTTPException as error:
            # The status message is already shown: it says why instead of staying "received".
            await status.edit(render.failed_text(author.id, instruction, user_message(error)), None)
            return
        if thread is not None:
            destination = Destination(thread.id, interaction.guild_id, None, status.message_id)
            place = place_of(thread, interaction.guild_id)
        try:
            image = await self._download(attachment)
        except BadRequest as error:
            await status.edit(render.failed_text(author.id, instruction, str(error)), None)
            return
        await self._submit(
            lambda ctx: self._service.start_edit(place, author, image, instruction, reply_context=ctx),
            status,
            destination,
            author,
            instruction,
        )

    async def button(self, interaction: discord.Interaction, action: str, version_id: str) -> None:
        """Undo, Retry, Stronger, Subtler or Captions on a shown version (anyone may click)."""
        version = self._service.get_version(version_id)
        if action == "captions":
            await interaction.response.send_message(
                embed=render.captions_embed(version), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        author = self.author_of_interaction(interaction)
        if action == "undo":
            parent = self._service.undo(version_id)
            await interaction.response.defer(thinking=True)
            text = render.undo_text(parent, version, author.id)
            fitted = await _fit_image(
                self._service.image_png(parent.id), interaction.filesize_limit, parent.id
            )
            assert interaction.channel_id is not None
            async with self._posting_in(interaction.channel_id):
                shown = await interaction.edit_original_response(
                    content=_with_note(text, fitted.note),
                    attachments=[discord.File(_bytes_io(fitted.data), fitted.filename)],
                    view=result_view(parent),
                    allowed_mentions=NO_MENTIONS,
                )
                self._service.link_message(TRANSPORT, shown.id, parent.id)
            return
        requests: dict[str, Callable[..., Ticket]] = {
            "retry": self._service.retry,
            "stronger": self._service.stronger,
            "subtler": self._service.subtler,
        }
        request = requests[action]
        instruction = version.instruction or ""
        status = await self._respond_received(interaction, author, instruction)
        await self._submit(
            lambda ctx: request(version_id, author, reply_context=ctx),
            status,
            self._interaction_destination(interaction, status),
            author,
            instruction,
        )

    async def cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        """The Cancel button: the service decides who may (the requester or a moderator)."""
        cancelled = await self._service.cancel(job_id, self.author_of_interaction(interaction))
        text = "Cancelling that edit…" if cancelled else "That edit has already finished."
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def history(self, interaction: discord.Interaction, reference: str | None) -> None:
        """/history: the contact sheet of a result's lineage (default: the channel's latest)."""
        if reference:
            parsed = render.parse_message_reference(reference)
            if parsed is None:
                raise BadRequest(
                    "That isn't a message link or id. Right-click one of my results → Copy Message Link."
                )
            # A result posted a moment ago may not be linked yet: wait briefly for it.
            channel_id = parsed[0] or interaction.channel_id
            version = await self._linked_version(channel_id, parsed[1], INTERACTION_LINK_WAIT_S)
            if version is None:
                raise BadRequest("That message isn't one of my results, so it has no history here.")
        else:
            assert interaction.channel_id is not None
            latest = self._preferences.latest_version(
                channel_place(interaction.guild_id, interaction.channel_id)
            )
            if latest is None:
                raise BadRequest(
                    "There are no edits in this channel yet. Give `/history` a link to a result."
                )
            version = self._service.get_version(latest)
        guild_id = None if interaction.guild_id is None else str(interaction.guild_id)
        if self._service.place_of(version).guild_id != guild_id:
            raise BadRequest(
                "That result belongs to another server or a private chat, so I won't show it here."
            )
        await interaction.response.defer(thinking=True)
        lineage = self._service.history(version.id)
        sheet = self._service.contact_sheet(version.id)
        fitted = await _fit_image(sheet, interaction.filesize_limit, f"history-{version.id}")
        text = render.history_text(lineage, self._config.history_limit)
        await interaction.edit_original_response(
            content=_with_note(text, fitted.note),
            attachments=[discord.File(_bytes_io(fitted.data), fitted.filename)],
            allowed_mentions=NO_MENTIONS,
        )

    # --- jobs ------------------------------------------------------------------------------

    async def _submit(
        self,
        make_ticket: Callable[[dict[str, Any]], Ticket],
        status: StatusMessage,
        destination: Destination,
        author: Author,
        instruction: str,
    ) -> None:
        """Queue the job; a refusal (full queue, per-user cap, bad image) becomes the status text."""
        try:
            ticket = make_ticket(destination.to_context())
        except Exception as error:
            await status.edit(render.failed_text(author.id, instruction, user_message(error)), None)
            return
        self._spawn(self._follow(ticket, status, destination))

    async def recovered(self, ticket: Ticket) -> None:
        """A job recovered after a restart: follow it to the place its reply context names."""
        destination = Destination.from_context(ticket.job.reply_context)
        if destination is None:
            return
        if destination.status_message_id is None:
            log.warning(
                "recovered job %s has no status message; its result will still be posted", ticket.job_id
            )
        status_id = destination.status_message_id or 0
        status = ChannelStatus(self._bot, destination.channel_id, status_id, destination.guild_id)
        self._spawn(self._follow(ticket, status, destination, has_status=status_id != 0))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _follow(
        self, ticket: Ticket, status: StatusMessage, destination: Destination, *, has_status: bool = True
    ) -> None:
        job = ticket.job
        updater = StatusUpdater(status, self._config.progress_interval_s)
        watcher = asyncio.create_task(self._watch(ticket, updater)) if has_status else None
        started = time.monotonic()
        try:
            version = await ticket.result()
        except EditCancelled:
            final = render.cancelled_text(job.requester_id, job.instruction)
        except Exception as error:
            final = render.failed_text(job.requester_id, job.instruction, user_message(error))
        else:
            try:
                final = await self._deliver(version, destination, job.requester_id, job.instruction, started)
            except Exception as error:
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
        if has_status:
            await updater.finish(final)

    async def _watch(self, ticket: Ticket, updater: StatusUpdater) -> None:
        job = ticket.job
        view = cancel_view(job.id)
        async for progress in ticket.progress():
            if not progress.final:
                updater.show(render.status_text(progress, job.requester_id, job.instruction), view)

    async def _deliver(
        self, version: Version, destination: Destination, requester_id: str, instruction: str, started: float
    ) -> str:
        """Post the result (after the safety check, when on); the status message's final text."""
        if self._preferences.safety_check(destination.guild_id):
            if self._safety is None:
                return render.failed_text(requester_id, instruction, CHECK_FAILED)
            try:
                unsafe = await self._safety.is_unsafe(self._service.image_png(version.id))
            except Exception:
                log.exception("the safety check failed on version %s", version.id)
                return render.failed_text(requester_id, instruction, CHECK_FAILED)
            if unsafe:
                log.info("version %s withheld by the safety check", version.id)
                return render.failed_text(requester_id, instruction, WITHHELD)
        await self._send_version(destination, version, lambda note: render.result_text(version, note))
        self._preferences.remember_latest(
            channel_place(destination.guild_id, destination.channel_id), version.id
        )
        return render.done_text(requester_id, instruction, time.monotonic() - started)

    async def _send_version(
        self, destination: Destination, version: Version, text_for: Callable[[str], str]
    ) -> discord.Message:
        """Post a version's image in the channel (fitted to the upload limit) and link the message.

        A 413 from Discord (its limit was lower than it said) is retried once at half the size;
        sending again is safe then, since nothing was posted.
        """
        channel = self._bot.get_partial_messageable(destination.channel_id, guild_id=destination.guild_id)
        reference = None
        if destination.reply_to is not None:
            reference = discord.MessageReference(
                message_id=destination.reply_to,
                channel_id=destination.channel_id,
                guild_id=destination.guild_id,
                fail_if_not_exists=False,
            )
        png = self._service.image_png(version.id)
        limit = self._channel_upload_limit(destination.guild_id)
        stem = f"edit-{version.id}"
        async with self._posting_in(destination.channel_id):
            fitted = await _fit_image(png, limit, stem)
            try:
                message = await self._send_file(channel, reference, fitted, version, text_for)
            except discord.HTTPException as error:
                if error.status != 413:
                    raise
                fitted = await _fit_image(png, len(fitted.data) // 2, stem)
                message = await self._send_file(channel, reference, fitted, version, text_for)
            self._service.link_message(TRANSPORT, message.id, version.id)
        return message

    @staticmethod
    async def _send_file(
        channel: discord.PartialMessageable,
        reference: discord.MessageReference | None,
        fitted: render.FittedImage,
        version: Version,
        text_for: Callable[[str], str],
    ) -> discord.Message:
        return await channel.send(
            text_for(fitted.note),
            file=discord.File(_bytes_io(fitted.data), fitted.filename),
            view=result_view(version),
            reference=reference,
            allowed_mentions=NO_MENTIONS,
        )

    async def close(self, grace_s: float = 10.0) -> None:
        """Let followers finish reporting (the stopped service ends their jobs), then stop them."""
        if self._followers:
            _, pending = await asyncio.wait(set(self._followers), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._safety is not None:
            self._safety.close()


async def _fit_image(png: bytes, limit: int, stem: str) -> render.FittedImage:
    """``render.fit_image``, on a thread when it has to re-encode (seconds for a large image)."""
    if len(png) <= limit:
        return render.fit_image(png, limit, stem)
    return await asyncio.to_thread(render.fit_image, png, limit, stem)


def _with_note(text: str, note: str) -> str:
    return f"{text}\n-# {note}" if note else text


def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
