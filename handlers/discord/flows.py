"""The entry points of the bot: every cog, button and modal hands its event to :class:`Relay`.

Each flow checks what it can without waiting (``intake``: the image, the instruction, the
per-user cap), answers at once (a status message, a modal, a deferral), and only then waits:
for a message link (``links``), a download, the service. ``delivery`` follows each job to its
posted result. The service owns every decision about conversations, servers included.

A new conversation's upload is recorded (``EditService.outbox``) before it is downloaded, so
:meth:`Relay.resume_uploads` fetches again at start-up whatever a crash interrupted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import discord

from handlers.discord import delivery, intake, render
from handlers.discord.delivery import Delivery, Destination, Received
from handlers.discord.errors import NETWORK_ERRORS, NO_MENTIONS, BadRequest, report
from handlers.discord.links import INTERACTION_LINK_WAIT_S, Links
from handlers.discord.moderation import InstructionFilter, SafetyChecker
from handlers.discord.preferences import Preferences, channel_place
from handlers.discord.status import ChannelStatus, InteractionStatus
from handlers.discord.steering import Steering
from handlers.discord.views import InstructionModal, cancel_view, result_view
from sessions import Author, DiscordConfig, EditService, Place, Ticket, Upload, Version

UNDO_WORDS = frozenset({"undo", "go back", "back", "revert"})
#: Thread names are limited to 100 characters by Discord.
THREAD_NAME_CHARS = 90
REPLY_HINT = (
    "What should I change? Reply to the result again with an instruction, e.g. *make it snowy*, "
    "or `undo` to go back a step."
)
MENTION_HINT = (
    "Attach an image and tell me what to change (e.g. *make it snowy*), or reply to one of my "
    "results with the next change. `/help` explains more."
)
DM_HINT = (
    "To edit a picture, send it to me with what to change in the same message (e.g. *make it "
    "snowy*), or reply to one of my results with the next change. `/help` explains more."
)
ANOTHER_SERVER = "That message is in another server or a private chat, so I can't edit it here."


def _guild_id(item: discord.Message | discord.Interaction) -> int | None:
    return item.guild.id if item.guild is not None else None


class Relay:
    """Every flow of the bot, from a Discord event to the service and back to the channel."""

    def __init__(
        self,
        bot: discord.Client,
        service: EditService,
        *,
        config: DiscordConfig,
        preferences: Preferences,
        safety: SafetyChecker | None,
    ) -> None:
        self._bot = bot
        self._service = service
        self._config = config
        self._preferences = preferences
        self._filter = InstructionFilter(config.blocked_words, config.blocked_patterns)
        self._links = Links(bot, service)
        self._delivery = Delivery(
            bot,
            service,
            self._links,
            preferences=preferences,
            safety=safety,
            progress_interval_s=config.progress_interval_s,
        )
        self._steering = Steering(service, self._delivery, self._links, self._respond_received, self.place_of)

    def _instruction(self, text: str) -> str:
        return intake.instruction_of(text, self._filter, self._service.check_instruction)

    # --- messages -----------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        """Decide what a message asks for; most messages ask nothing of the bot."""
        if message.author.bot or message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        bot_user = self._bot.user
        assert bot_user is not None
        text = render.without_bot_mention(message.content, bot_user.id)
        try:
            replied_version = await self._links.replied_version(message)
            if message.attachments and intake.addressed(message, bot_user, self._preferences):
                await self._new_edit_from_message(message, text)
            elif replied_version is not None and text:
                place = intake.place_of(message.channel, _guild_id(message))
                if text.lower().strip(" .!") in UNDO_WORDS:
                    await self._undo_from_message(message, replied_version, place)
                else:
                    instruction = self._instruction(text)
                    self._service.check_admission(intake.author_of_message(message))
                    received = await self._post_received(message, message.channel, message.id, instruction)
                    await self._continue(received, replied_version, place)
            elif bot_user in message.mentions or message.guild is None:
                # Nothing to do: say how (a reply to a result needs an instruction; a DM an image).
                hint = REPLY_HINT if replied_version is not None else MENTION_HINT
                if message.guild is None and replied_version is None:
                    hint = DM_HINT
                await message.reply(render.fit(hint), mention_author=False, allowed_mentions=NO_MENTIONS)
        except Exception as error:
            await report(message, error)

    async def _new_edit_from_message(self, message: discord.Message, text: str) -> None:
        attachment = intake.image_of(message.attachments, self._service.limits)
        instruction = self._instruction(text)
        self._service.check_admission(intake.author_of_message(message))
        channel: Any = message.channel
        reply_to: int | None = message.id
        if self._config.open_threads and isinstance(channel, discord.TextChannel):
            channel = await message.create_thread(name=instruction[:THREAD_NAME_CHARS])
            reply_to = None  # the thread starts from the request; replies cannot cross channels
        received = await self._post_received(message, channel, reply_to, instruction)
        await self._start(received, intake.place_of(channel, received.destination.guild_id), attachment.url)

    async def _undo_from_message(self, message: discord.Message, version: Version, place: Place) -> None:
        parent = self._service.undo(version.id, place=place)
        destination = Destination(message.channel.id, _guild_id(message), message.id, None)
        text = render.undo_text(parent, version, str(message.author.id))
        await self._delivery.send_version(destination, parent, lambda note: render.with_note(text, note))

    async def _post_received(
        self, message: discord.Message, channel: Any, reply_to: int | None, instruction: str
    ) -> Received:
        """Answer a message's request in ``channel`` with its status message."""
        author = intake.author_of_message(message)
        guild_id = _guild_id(message)
        reference = None
        if reply_to is not None:
            reference = discord.MessageReference(
                message_id=reply_to, channel_id=channel.id, guild_id=guild_id, fail_if_not_exists=False
            )
        job_id = self._service.new_job_id()
        sent = await channel.send(
            render.fit(render.received_text(author.id, instruction)),
            view=cancel_view(job_id),
            reference=reference,
            allowed_mentions=NO_MENTIONS,
        )
        status = ChannelStatus(self._bot, channel.id, sent.id, guild_id)
        destination = Destination(channel.id, guild_id, reply_to, sent.id)
        return Received(author, instruction, status, destination, job_id)

    # --- jobs: a new conversation, or the next step of one -----------------------------

    async def _start(self, received: Received, place: Place, url: str, upload: Upload | None = None) -> None:
        """A new conversation: record the upload, download it (a failure is the status's reason,
        and the upload is kept until that is shown, for the next start), queue it."""
        try:
            if upload is None:
                upload = await self._service.outbox.record_upload(
                    received.job_id,
                    place,
                    received.author,
                    received.instruction,
                    source=url,
                    reply_context=received.destination.to_context(),
                )
            image = await intake.download(self._bot, url, self._config.download_timeout_s)
        except Exception as error:
            told = await self._delivery.fail(received, error)
            if told and upload is not None:
                await self._service.outbox.drop_upload(upload.id)
            return
        await self._delivery.submit(
            received,
            self._service.start_edit,
            place,
            received.author,
            image,
            received.instruction,
            upload_id=upload.id,
        )

    async def _continue(self, received: Received, version: Version, place: Place) -> None:
        await self._delivery.submit(
            received,
            self._service.continue_edit,
            version.id,
            received.author,
            received.instruction,
            place=place,
        )

    async def resume_uploads(self) -> None:
        """Fetch again the uploads a crash interrupted (or tell their senders why not)."""
        for upload in self._service.outbox.pending_uploads():
            destination = Destination.from_context(upload.reply_context)
            status = None if destination is None else destination.status(self._bot)
            if destination is None or status is None:
                continue  # another transport's
            received = Received(upload.requester, upload.instruction, status, destination, upload.id)
            self._delivery.spawn(self._start(received, upload.place, upload.source, upload))

    # --- interactions --------------------------------------------------------------------

    async def _respond_received(
        self, interaction: discord.Interaction, author: Author, instruction: str
    ) -> Received:
        """The interaction's answer is the job's status message, in the channel for all to see."""
        job_id = self._service.new_job_id()
        response = await interaction.response.send_message(
            render.fit(render.received_text(author.id, instruction)),
            view=cancel_view(job_id),
            allowed_mentions=NO_MENTIONS,
        )
        message_id = response.message_id
        assert message_id is not None
        assert interaction.channel_id is not None
        fallback = ChannelStatus(self._bot, interaction.channel_id, message_id, interaction.guild_id)
        status = InteractionStatus(interaction, message_id, fallback)
        destination = Destination(interaction.channel_id, interaction.guild_id, message_id, message_id)
        return Received(author, instruction, status, destination, job_id)

    async def _thread_for(self, interaction: discord.Interaction, instruction: str) -> discord.Thread | None:
        """With ``open_threads``, a thread started from the status message of a new conversation."""
        if not (self._config.open_threads and isinstance(interaction.channel, discord.TextChannel)):
            return None
        original = await interaction.original_response()
        return await original.create_thread(name=instruction[:THREAD_NAME_CHARS])

    async def _start_from_interaction(
        self, interaction: discord.Interaction, received: Received, attachment: discord.Attachment
    ) -> None:
        place = self.place_of(interaction)
        try:
            thread = await self._thread_for(interaction, received.instruction)
        except (discord.HTTPException, *NETWORK_ERRORS) as error:
            # The status message is already shown: it says why instead of staying "received".
            await self._delivery.fail(received, error)
            return
        if thread is not None:
            # The result goes to the thread; the status stays in the channel.
            status = received.status
            in_thread = Destination(
                thread.id, interaction.guild_id, None, status.message_id, status.channel_id
            )
            received = dataclasses.replace(received, destination=in_thread)
            place = intake.place_of(thread, interaction.guild_id)
        await self._start(received, place, attachment.url)

    async def edit_command(
        self, interaction: discord.Interaction, attachment: discord.Attachment, instruction: str
    ) -> None:
        """/edit image instruction."""
        intake.check_image(attachment, self._service.limits)
        instruction = self._instruction(instruction)
        author = intake.author_of_interaction(interaction)
        self._service.check_admission(author)
        received = await self._respond_received(interaction, author, instruction)
        await self._start_from_interaction(interaction, received, attachment)

    async def open_modal(self, interaction: discord.Interaction, target: discord.Message) -> None:
        """The "Edit image" menu: ask for the instruction at once (no waiting before a modal).

        A message of the bot may be a result still being linked: it is looked up after the modal.
        """
        if _guild_id(target) != interaction.guild_id:
            raise BadRequest(ANOTHER_SERVER)
        if self._bot.user is None or target.author.id != self._bot.user.id:
            intake.image_of(target.attachments, self._service.limits)
        limit = self._service.limits.max_instruction_chars
        await interaction.response.send_modal(InstructionModal(target, limit))

    async def edit_from_modal(
        self, interaction: discord.Interaction, target: discord.Message, text: str
    ) -> None:
        instruction = self._instruction(text)
        author = intake.author_of_interaction(interaction)
        self._service.check_admission(author)
        received = await self._respond_received(interaction, author, instruction)
        try:  # after answering: a result of ours may still be on its way to being linked
            version = await self._links.target_version(target)
            attachment = (
                None if version is not None else intake.image_of(target.attachments, self._service.limits)
            )
        except Exception as error:
            await self._delivery.fail(received, error)
            return
        if attachment is not None:
            await self._start_from_interaction(interaction, received, attachment)
        elif version is not None:
            await self._continue(received, version, self.place_of(interaction))

    async def button(self, interaction: discord.Interaction, action: str, version_id: str) -> None:
        """A button of a shown version (anyone may click, unless the channel keeps them to the requester)."""
        place = self.place_of(interaction)
        version = self._service.get_version(version_id, place=place)
        author = intake.author_of_interaction(interaction)
        self._steering.check_may_press(author, version, action)
        if action == "fix":
            await self._steering.open_fix(interaction, version)
            return
        if action == "delete":
            await self._steering.delete(interaction, version)
            return
        if action == "variations":
            await self._steering.variations(interaction, version)
            return
        if action == "captions":
            await interaction.response.send_message(
                embed=render.captions_embed(version), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        if action == "undo":
            parent = self._service.undo(version_id, place=place)
            await interaction.response.defer(thinking=True)
            text = render.undo_text(parent, version, author.id)
            assert interaction.channel_id is not None
            async with self._links.posting_in(interaction.channel_id):
                png = self._service.image_png(parent.id, place=place)
                shown = await delivery.respond_with_image(
                    interaction, png, parent.id, text, result_view(parent)
                )
                await self._links.link(shown.id, parent.id)
            return
        request = {
            "retry": self._service.retry,
            "stronger": self._service.stronger,
            "subtler": self._service.subtler,
        }[action]
        self._service.check_admission(author)
        received = await self._respond_received(interaction, author, version.instruction or "")
        await self._delivery.submit(received, request, version_id, author, place=place)

    async def fix_from_modal(
        self, interaction: discord.Interaction, version_id: str, before: str, after: str
    ) -> None:
        await self._steering.fix_from_modal(interaction, version_id, before, after)

    async def pick(self, interaction: discord.Interaction, job_id: str, number: int) -> None:
        await self._steering.pick(interaction, job_id, number)

    async def cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        """The Cancel button: the service decides who may (the requester or a moderator here).

        Deferred first: the service waits for the writer thread, which may be behind image writes
        for longer than Discord's 3 s to answer an interaction.
        """
        author = intake.author_of_interaction(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        cancelled = await self._service.cancel(job_id, author, place=self.place_of(interaction))
        text = "Cancelling that edit…" if cancelled else "That edit has already finished."
        await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)

    async def history(self, interaction: discord.Interaction, reference: str | None) -> None:
        """/history: the contact sheet of a result's lineage (default: the channel's latest).

        Deferred first: finding a result still being linked, and drawing the sheet, take time.
        """
        parsed = render.parse_message_reference(reference) if reference else None
        if reference and parsed is None:
            raise BadRequest(
                "That isn't a message link or id. Right-click one of my results → Copy Message Link."
            )
        await interaction.response.defer(thinking=True)
        version = await self._history_version(interaction, parsed)
        place = self.place_of(interaction)
        text = render.history_text(self._service.history(version.id, place=place), self._config.history_limit)
        sheet = await self._service.contact_sheet(version.id, place=place)
        await delivery.respond_with_image(interaction, sheet, f"history-{version.id}", text)

    async def _history_version(
        self, interaction: discord.Interaction, parsed: tuple[int | None, int] | None
    ) -> Version:
        assert interaction.channel_id is not None
        if parsed is None:
            latest = self._preferences.latest_version(
                channel_place(interaction.guild_id, interaction.channel_id)
            )
            if latest is None:
                raise BadRequest(
                    "There are no edits in this channel yet. Give `/history` a link to a result."
                )
            return self._service.get_version(latest, place=self.place_of(interaction))
        # A result posted a moment ago may not be linked yet: wait briefly for it.
        channel_id = parsed[0] or interaction.channel_id
        version = await self._links.version_of(parsed[1], channel_id, INTERACTION_LINK_WAIT_S)
        if version is None:
            raise BadRequest("That message isn't one of my results, so it has no history here.")
        return version

    def place_of(self, interaction: discord.Interaction) -> Place:
        """Where an interaction's request is made (the service checks versions against it)."""
        if isinstance(interaction.channel, discord.Thread):
            return intake.place_of(interaction.channel, interaction.guild_id)
        assert interaction.channel_id is not None
        return channel_place(interaction.guild_id, interaction.channel_id)

    # --- the service and the bot's life ------------------------------------------------------

    async def recovered(self, ticket: Ticket) -> None:
        """Service listener: a job a restart left undelivered reports where it was asked."""
        self._delivery.recovered(ticket)

    async def close(self, grace_s: float = 10.0) -> None:
        await self._delivery.close(grace_s)
