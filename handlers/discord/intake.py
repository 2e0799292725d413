"""What a request brings, checked before anything is queued: its image, its instruction, who and where.

Every check raises :class:`BadRequest` with the sentence the user is shown, so a flow only
calls these in order and lets the error policy (``errors.py``) answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import Any

import aiohttp
import discord

from handlers.discord import render
from handlers.discord.errors import BadRequest
from handlers.discord.moderation import InstructionFilter
from handlers.discord.preferences import Preferences, channel_place
from sessions import Author, LimitsConfig, Place, normalise_instruction

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
            f"{render.quote(attachment.filename, 60)} is not an image I can edit. "
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


def instruction_of(text: str, instruction_filter: InstructionFilter, check: Callable[[str], str]) -> str:
    """The instruction as the engine reads it (``check``: normalised, not too long), when there is
    one and moderation lets it through. An instruction of invisible characters is none."""
    if not normalise_instruction(text):
        raise BadRequest(NO_INSTRUCTION)
    instruction = check(text)
    instruction_filter.check(instruction)
    return instruction


async def download(client: discord.Client, url: str, timeout_s: float) -> bytes:
    """An attachment's bytes from Discord's file server; every way that can fail becomes a
    :class:`BadRequest` saying what happened."""
    try:
        async with asyncio.timeout(timeout_s):
            return await client.http.get_from_cdn(url)
    except (discord.HTTPException, aiohttp.ClientError, OSError) as error:  # OSError: timeouts too
        log.warning("downloading %s failed: %r", url, error)
        problem = _what_went_wrong(error, timeout_s)
        raise BadRequest(f"I couldn't download your image: {problem}. Please post it again.") from error


def _what_went_wrong(error: BaseException, timeout_s: float) -> str:
    if isinstance(error, TimeoutError):
        return f"it didn't arrive within {timeout_s:g} seconds"
    if isinstance(error, discord.NotFound | discord.Forbidden):
        return "Discord no longer offers it (the link expired or the message was deleted)"
    if isinstance(error, discord.HTTPException):
        return f"Discord's file server answered with an error ({error.status})"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "the connection was refused"
        return "Discord's file server could not be reached"
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the connection was closed before all of it arrived"
    causes = (error, getattr(error, "os_error", None), error.__cause__)
    if any(isinstance(cause, ConnectionResetError) for cause in causes):
        return "the connection was reset"
    return "the network failed"


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
