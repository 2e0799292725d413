"""The one place that turns any error into what the user is told (and what is logged).

Order of the checks in :func:`user_message`, most specific first:

1. ``sessions.errors.UserError`` (not found, not allowed, nothing to undo, rejected, failed,
   postponed) and the engine's ``InvalidInput``: their message is written for users; shown as is.
2. ``EditCancelled``: the edit was cancelled.
3. ``BadRequest`` (this module): a problem with what the user sent, found by the transport.
4. app-command failures (an option that cannot be converted, missing permissions, server
   only): what is wrong or missing. A command's own exception is unwrapped and checked again.
5. ``discord.Forbidden``: the bot lacks a permission in that channel; logged as a warning.
6. other ``discord.HTTPException``: Discord refused or failed; logged as a warning.
7. a network error (``NETWORK_ERRORS``): Discord could not be reached; logged as a warning.
8. anything else: a bug; logged with its traceback, the user gets an apology.

Every path that answers a user (messages, slash commands, buttons, modals, finished jobs)
goes through :func:`report`, so the same error always reads the same way.
"""

from __future__ import annotations

import logging

import aiohttp
import discord
from discord import app_commands

from handlers.discord import render
from sessions import EditCancelled, InvalidInput, UserError

log = logging.getLogger(__name__)

UNEXPECTED = "Sorry, something went wrong on my side. It was logged; please try again in a moment."
NO_MENTIONS = discord.AllowedMentions.none()


#: Permission names as Discord's own settings show them, where they differ from the API's.
PERMISSION_NAMES = {"manage_guild": "Manage Server", "manage_messages": "Manage Messages"}


def _permission_name(permission: str) -> str:
    return PERMISSION_NAMES.get(permission, permission.replace("_", " ").title())


class BadRequest(Exception):
    """What the user sent cannot be used (not an image, too large, no instruction); says why."""


#: Failures of the connection to Discord (OSError covers resets and TimeoutError).
NETWORK_ERRORS = (aiohttp.ClientError, OSError)


def is_transient(error: BaseException) -> bool:
    """Whether Discord may well take the same call later: it failed (5xx, after discord.py's own
    retries), limited the rate beyond discord.py's patience, or could not be reached."""
    if isinstance(error, discord.HTTPException):
        return error.status >= 500 or error.status == 429
    return isinstance(error, (discord.RateLimited, *NETWORK_ERRORS))


def user_message(error: BaseException) -> str:
    """The text to show for ``error``; logs what an operator should know (see the module docstring)."""
    if isinstance(error, app_commands.CommandInvokeError):
        return user_message(error.original)
    if isinstance(error, UserError | InvalidInput):
        return str(error)
    if isinstance(error, EditCancelled):
        return "The edit was cancelled."
    if isinstance(error, BadRequest):
        return str(error)
    if isinstance(error, app_commands.MissingPermissions):
        missing = ", ".join(_permission_name(p) for p in error.missing_permissions)
        return f"You need the {missing} permission to do that."
    if isinstance(error, app_commands.TransformerError):
        return f"`{error.value}` is not a valid value for that option."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "That only works in a server, not in direct messages."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use that command here."
    if isinstance(error, discord.Forbidden):
        log.warning("Discord refused an action for lack of permission: %s", error)
        return (
            "I'm missing a permission in this channel (I need to read messages, send messages, "
            "attach files and read the message history). Please ask a moderator to check my role."
        )
    if isinstance(error, discord.HTTPException):
        log.warning("Discord answered %s: %s", error.status, error)
        return "Discord had a problem handling that (it may be busy). Please try again in a moment."
    if isinstance(error, NETWORK_ERRORS):
        log.warning("could not reach Discord: %r", error)
        return "I couldn't reach Discord just now (the connection failed). Please try again in a moment."
    log.error("unexpected error", exc_info=error)
    return UNEXPECTED


async def report(target: discord.Interaction | discord.Message, error: BaseException) -> None:
    """Tell the user about ``error``: privately for interactions, as a reply for messages.

    An interaction already deferred ("thinking…") has its placeholder turned into the answer.
    """
    text = render.fit("⚠️ " + user_message(error))
    try:
        if isinstance(target, discord.Interaction):
            response = target.response
            if response.type == discord.InteractionResponseType.deferred_channel_message:
                await target.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            elif response.is_done():
                await target.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            else:
                await response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await target.reply(text, mention_author=False, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as failure:
        # Nothing more can be said to this user; the bot carries on serving everyone else.
        log.warning("could not report an error to the user (%s): %s", failure, text)
