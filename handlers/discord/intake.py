"""What a request brings, checked before anything is queued: its image, its instruction, who and where.

Every check raises :class:`BadRequest` with the sentence the user is shown, so a flow only
calls these in order and lets the error policy (``errors.py``) answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import discord

from handlers.discord import render
from handlers.discord.errors import BadRequest
from handlers.discord.moderation import InstructionFilter
from handlers.discord.preferences import Preferences, channel_place
from sessions import Author, LimitsConfig, Place

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
NO_INSTRUCTION = (
    "What should I change? Send the image again with an instruction in the same message, "
    "e.g. *make it snowy*."
)
NO_IMAGE = "That message has no image I can edit."


def is_image(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        return content_type.startswith("image/")
    return PurePosixPath(attachment.filename.lower()).suffix in IMAGE_SUFFIXES


def check_image(attachment: discord.Attachment, limits: LimitsConfig) -> discord.Attachment:
    """The attachment, when it is an image small enough to edit."""
    if not is_image(attachment):
        raise BadRequest(
            f"`{discord.utils.escape_markdown(attachment.filename)}` is not an image I can edit. "
            "Please attach a PNG, JPEG, WebP or GIF."
        )
    if attachment.size > limits.max_input_bytes:
        raise BadRequest(
            f"That image is {render.describe_bytes(attachment.size)}; the most I accept is "
            f"{render.describe_bytes(limits.max_input_bytes)}. Please send a smaller one."
        )
    return attachment


def image_of(attachments: Sequence[discord.Attachment], limits: LimitsConfig) -> discord.Attachment:
    """The image a message offers: its first image, else its first attachment (refused as no image)."""
    if not attachments:
        raise BadRequest(NO_IMAGE)
    return check_image(next((a for a in attachments if is_image(a)), attachments[0]), limits)


def instruction_of(text: str, instruction_filter: InstructionFilter) -> str:
    """The instruction with its spaces tidied, when there is one and moderation lets it through."""
    instruction = " ".join(text.split())
    if not instruction:
        raise BadRequest(NO_INSTRUCTION)
    instruction_filter.check(instruction)
    return instruction


async def download(attachment: discord.Attachment) -> bytes:
    try:
        return await attachment.read()
    except discord.HTTPException as error:
        log.warning("downloading attachment %s failed: %s", attachment.id, error)
        raise BadRequest("I couldn't download that image from Discord; please upload it again.") from error


def author_of_message(message: discord.Message) -> Author:
    """The sender; a moderator is someone who may manage messages in that channel."""
    user = message.author
    moderator = False
    if isinstance(user, discord.Member) and isinstance(
        message.channel, discord.abc.GuildChannel | discord.Thread
    ):
        moderator = message.channel.permissions_for(user).manage_messages
    return Author(str(user.id), user.display_name, moderator)


def author_of_interaction(interaction: discord.Interaction) -> Author:
    user = interaction.user
    moderator = interaction.guild_id is not None and interaction.permissions.manage_messages
    return Author(str(user.id), user.display_name, moderator)


def place_of(channel: Any, guild_id: int | None) -> Place:
    """The service's place of a channel: a thread is a place of its own inside its parent."""
    if isinstance(channel, discord.Thread):
        return channel_place(guild_id, channel.parent_id, channel.id)
    return channel_place(guild_id, channel.id)


def addressed(message: discord.Message, bot_user: discord.ClientUser, preferences: Preferences) -> bool:
    """A DM, a mention of the bot, or a message in an edit channel (or a thread of one)."""
    if message.guild is None or bot_user in message.mentions:
        return True
    channel = message.channel
    channel_id = channel.parent_id if isinstance(channel, discord.Thread) else channel.id
    return preferences.is_edit_channel(message.guild.id, channel_id)
