"""The fake's REST API for the bot's own calls: who it is, its commands, channels and messages."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.support.discord.gateway import Gateway
from tests.support.discord.journal import Journal
from tests.support.discord.state import DiscordState
from tests.support.discord.wire import (
    EPHEMERAL,
    LOADING,
    TIER_UPLOAD_LIMIT,
    Call,
    Record,
    UploadedFile,
    error,
    json_response,
    now_iso,
    validate_message,
)

Handler = Callable[[Call], Awaitable[web.StreamResponse]]
#: (path pattern, method, handler); a pattern's groups become ``Call.args``.
Route = tuple[str, str, Handler]
SNOWFLAKE = r"(\d+)"


class RestApi:
    """The routes under ``/api/v10`` the bot calls with its token; every change is journalled."""

    def __init__(self, state: DiscordState, journal: Journal, gateway: Gateway) -> None:
        self.state = state
        self.journal = journal
        self.gateway = gateway

    def routes(self) -> list[Route]:
        messages = f"/channels/{SNOWFLAKE}/messages"
        message = f"{messages}/{SNOWFLAKE}"
        return [
            ("/users/@me", "GET", self._get_me),
            ("/oauth2/applications/@me", "GET", self._get_application),
            ("/gateway", "GET", self._get_gateway),
            ("/gateway/bot", "GET", self._get_gateway),
            (f"/applications/{SNOWFLAKE}/commands", "PUT", self._put_commands),
            (f"/applications/{SNOWFLAKE}/guilds/{SNOWFLAKE}/commands", "PUT", self._put_commands),
            (f"/applications/{SNOWFLAKE}/commands", "GET", self._get_commands),
            (f"/applications/{SNOWFLAKE}/guilds/{SNOWFLAKE}/commands", "GET", self._get_commands),
            (f"/channels/{SNOWFLAKE}", "GET", self._get_channel),
            (messages, "POST", self._create_message),
            (messages, "GET", self._list_messages),
            (message, "GET", self._get_message),
            (message, "PATCH", self._edit_message),
            (message, "DELETE", self._delete_message),
            (f"{message}/threads", "POST", self._create_thread),
            (f"/channels/{SNOWFLAKE}/typing", "POST", self._typing),
            (f"{message}/reactions/([^/]+)/@me", "PUT", self._add_reaction),
            (f"{message}/reactions/([^/]+)/@me", "DELETE", self._remove_reaction),
            ("/users/@me/channels", "POST", self._create_dm),
        ]

    # ------------------------------------------------------------------ what other routes share

    async def publish(self, message: dict[str, Any]) -> None:
        """Tell the bot about a message it created (Discord sends no event for ephemeral ones)."""
        if not message["flags"] & EPHEMERAL:
            await self.gateway.dispatch(
                "MESSAGE_CREATE", {k: v for k, v in message.items() if k != "allowed_mentions"}
            )

    async def apply_edit(
        self,
        message: dict[str, Any],
        body: dict[str, Any],
        files: tuple[UploadedFile, ...],
        path: str,
        method: str,
    ) -> dict[str, Any]:
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ([] if key != "content" else "")
        if "flags" in body and body["flags"] is not None:
            message["flags"] = int(body["flags"]) | (message["flags"] & EPHEMERAL)
        message["flags"] &= ~LOADING
        message["attachments"] = self.state.attachments_for(body, files, message["attachments"])
        message["edited_timestamp"] = now_iso()
        if "allowed_mentions" in body:
            message["allowed_mentions"] = body["allowed_mentions"]
        snapshot = json.loads(json.dumps(message))
        await self.journal.record(Record("edit", method, path, body, files, snapshot, time.monotonic()))
        if not message["flags"] & EPHEMERAL:
            await self.gateway.dispatch(
                "MESSAGE_UPDATE", {k: v for k, v in snapshot.items() if k != "allowed_mentions"}
            )
        return snapshot

    # ------------------------------------------------------------------ the bot, its application, commands

    async def _get_me(self, call: Call) -> web.Response:
        return json_response({**self.state.bot_user, "verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_application(self, call: Call) -> web.Response:
        return json_response(
            {
                "id": self.state.application_id,
                "name": "Editbot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.state.users["dave"],
                "verify_key": "0" * 64,
                "flags": 0,
            }
        )

    async def _get_gateway(self, call: Call) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return json_response({"url": self.state.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _put_commands(self, call: Call) -> web.Response:
        _application_id, *optional = call.args
        guild_id = optional[0] if optional else None
        body = call.body
        commands = self.state.commands
        # Re-syncing replaces the previous set of that scope.
        for command_id in [i for i, c in commands.items() if c.get("guild_id") == guild_id]:
            del commands[command_id]
        answer = []
        for command in body or []:
            stored = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                **command,
                "id": self.state.snowflake(),
                "application_id": self.state.application_id,
                "version": self.state.snowflake(),
            }
            if guild_id:
                stored["guild_id"] = guild_id
            commands[stored["id"]] = stored
            answer.append(stored)
        await self.journal.record(
            Record("commands", "PUT", call.path, body, (), {"commands": answer}, time.monotonic())
        )
        return json_response(answer)

    async def _get_commands(self, call: Call) -> web.Response:
        _application_id, *optional = call.args
        guild_id = optional[0] if optional else None
        return json_response([c for c in self.state.commands.values() if c.get("guild_id") == guild_id])

    # ------------------------------------------------------------------ channels and messages

    async def _get_channel(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        channel = self.state.channel(channel_id)
        if channel is None:
            return error(404, 10003, "Unknown Channel")
        return json_response(channel)

    async def _create_message(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        body, files = call.body, call.files
        state = self.state
        if state.channel(channel_id) is None:
            return error(404, 10003, "Unknown Channel")
        limit = state.upload_limit if state.is_guild_channel(channel_id) else TIER_UPLOAD_LIMIT[0]
        problem = validate_message(body, files, limit)
        if problem is not None:
            await self.journal.record(
                Record("rejected", "POST", call.path, body, files, None, time.monotonic())
            )
            return problem
        ref = body.get("message_reference")
        if ref and str(ref["message_id"]) not in state.messages and ref.get("fail_if_not_exists", True):
            return error(400, 50035, "Invalid Form Body", errors={"message_reference": "Unknown message"})
        message = state.bot_message(channel_id, body, files)
        await self.journal.record(
            Record("message", "POST", call.path, body, files, message, time.monotonic())
        )
        await self.publish(message)
        return json_response(message)

    async def _list_messages(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        limit = int(call.query.get("limit", 50))
        found = [m for m in self.state.messages.values() if m["channel_id"] == channel_id]
        found.sort(key=lambda m: int(m["id"]), reverse=True)
        return json_response(found[:limit])

    async def _get_message(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        message = self.state.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return error(404, 10008, "Unknown Message")
        return json_response(self.state.as_seen_by_bot(message, self.gateway.identified_intents))

    async def _edit_message(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        body, files = call.body, call.files
        message = self.state.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return error(404, 10008, "Unknown Message")
        if message["author"]["id"] != self.state.bot_user["id"]:
            return error(403, 50005, "Cannot edit a message authored by another user")
        problem = validate_message(body, files, self.state.upload_limit)
        if problem is not None:
            return problem
        return json_response(await self.apply_edit(message, body, files, call.path, "PATCH"))

    async def _delete_message(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        message = self.state.messages.pop(message_id, None)
        if message is None:
            return error(404, 10008, "Unknown Message")
        await self.journal.record(Record("delete", "DELETE", call.path, None, (), message, time.monotonic()))
        await self.gateway.dispatch(
            "MESSAGE_DELETE", {"id": message_id, "channel_id": channel_id, "guild_id": self.state.guild_id}
        )
        return web.Response(status=204)

    async def _create_thread(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        body = call.body
        state = self.state
        parent = state.guild_channels.get(channel_id)
        if parent is None or parent["type"] != 0:
            return error(400, 50024, "Cannot execute action on this channel type")
        if message_id not in state.messages:
            return error(404, 10008, "Unknown Message")
        # Discord gives a thread started from a message that message's id.
        thread = state.thread_payload(
            message_id,
            channel_id,
            state.bot_user["id"],
            body["name"],
            body.get("auto_archive_duration", 1440),
        )
        state.guild_channels[thread["id"]] = thread
        state.messages[message_id]["thread"] = thread
        await self.journal.record(Record("thread", "POST", call.path, body, (), thread, time.monotonic()))
        await self.gateway.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return json_response(thread, 201)

    async def _typing(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        await self.journal.record(
            Record("typing", "POST", call.path, None, (), {"channel_id": channel_id}, time.monotonic())
        )
        return web.Response(status=204)

    async def _add_reaction(self, call: Call) -> web.Response:
        _channel_id, message_id, emoji = call.args
        self.state.reactions.append((message_id, emoji))
        result = {"message_id": message_id, "emoji": emoji}
        await self.journal.record(Record("reaction", "PUT", call.path, None, (), result, time.monotonic()))
        return web.Response(status=204)

    async def _remove_reaction(self, call: Call) -> web.Response:
        _channel_id, message_id, emoji = call.args
        with contextlib.suppress(ValueError):
            self.state.reactions.remove((message_id, emoji))
        result = {"message_id": message_id, "emoji": emoji}
        await self.journal.record(
            Record("unreaction", "DELETE", call.path, None, (), result, time.monotonic())
        )
        return web.Response(status=204)

    async def _create_dm(self, call: Call) -> web.Response:
        body = call.body
        for name, user in self.state.users.items():
            if user["id"] == str(body["recipient_id"]):
                return json_response(self.state.dm_channel(name))
        return error(400, 50007, "Cannot send messages to this user")
