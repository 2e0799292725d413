"""A fake Discord (REST v10 + gateway) on 127.0.0.1, good enough for an unmodified discord.py bot.

Tests run the real client against it: the bot logs in, receives a guild over the gateway,
gets messages and interactions injected by the test, and everything it sends is recorded
(with uploaded file bytes) and can be awaited. Errors can be injected per route to test how
the bot copes with Discord failing. Only the parts of Discord the bot uses are modelled,
but those follow Discord's documented behaviour (snowflakes as strings, the message content
intent, interaction acknowledgement rules, upload limits, content length limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import io
import itertools
import json
import mimetypes
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
MESSAGE_CONTENT_INTENT = 1 << 15
GUILD_MEMBERS_INTENT = 1 << 1
PRIVILEGED_INTENTS = MESSAGE_CONTENT_INTENT | GUILD_MEMBERS_INTENT | (1 << 8)

# Permission bits (Discord's documented values).
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MANAGE_GUILD = 1 << 5
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
EVERYONE_PERMISSIONS = (
    ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)

# Message flags and interaction types used below.
EPHEMERAL = 1 << 6
LOADING = 1 << 7
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL = 4, 5, 6, 7, 9

#: Upload limit by guild premium tier, as Discord documents it.
TIER_UPLOAD_LIMIT = {0: 10 * 1024 * 1024, 1: 10 * 1024 * 1024, 2: 50 * 1024 * 1024, 3: 100 * 1024 * 1024}
MAX_CONTENT = 2000
#: A heartbeat's ACK waits this long, as over a network (see ``_GatewaySession._ack_later``).
HEARTBEAT_ACK_DELAY_S = 0.05
#: How long a simulated user takes to fill in a modal.
TYPING_S = 0.5
MAX_CUSTOM_ID = 100


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """discord.py only parses a body as JSON when Content-Type is exactly application/json."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, code: int, message: str, **extra: Any) -> web.Response:
    return _json_response({"code": code, "message": message, **extra}, status=status)


@dataclass(frozen=True)
class UploadedFile:
    field: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class Record:
    """One thing the bot did, as the fake saw it."""

    kind: str
    method: str
    path: str
    body: Any
    files: tuple[UploadedFile, ...]
    #: The message or object the request created or changed (None for plain acknowledgements).
    result: dict[str, Any] | None
    at: float


@dataclass(frozen=True)
class Call:
    """One REST request as a route handler sees it: the ids in its path, its body and files."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    files: tuple[UploadedFile, ...]
    args: tuple[str, ...]


@dataclass
class FailureRule:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float
    body: dict[str, Any] | None


@dataclass
class Interaction:
    payload: dict[str, Any]
    channel_id: str
    responded: int | None = None
    original_message_id: str | None = None
    modal: dict[str, Any] | None = None
    followups: list[str] = field(default_factory=list)


class FakeDiscord:
    """The fake server. ``await start()``, point discord.py at ``api_base``/``gateway_url``."""

    def __init__(
        self, token: str = "fake-token", *, premium_tier: int = 0, grant_message_content: bool = True
    ):
        self.token = token
        #: Whether the "developer portal" allows the privileged message content intent.
        self.grant_message_content = grant_message_content
        self._ids = itertools.count(1)
        self._last_id = 0
        self.port = 0
        self.log: list[Record] = []
        self._log_changed = asyncio.Condition()
        self._failures: list[FailureRule] = []
        self.attachments: dict[str, bytes] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, dict[str, Any]] = {}
        self.reactions: list[tuple[str, str]] = []
        self.identified_intents: int | None = None
        self._sockets: list[_GatewaySession] = []
        self._connected = asyncio.Event()
        self._runner: web.AppRunner | None = None

        self.bot_user = self._user("editbot", bot=True)
        self.application_id = self.bot_user["id"]
        self.users = {name: self._user(name) for name in ("alice", "bob", "carol", "dave")}
        self.guild_id = self._snowflake()
        self.premium_tier = premium_tier
        self.everyone_role = self._role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
        self.moderator_role = self._role(self._snowflake(), "Moderator", MANAGE_GUILD | MANAGE_MESSAGES, 1)
        self.bot_role = self._role(self._snowflake(), "Editbot", EVERYONE_PERMISSIONS, 2)
        self.roles = [self.everyone_role, self.moderator_role, self.bot_role]
        #: carol is the moderator (Manage Server + Manage Messages).
        self.member_roles = {
            self.bot_user["id"]: [self.bot_role["id"]],
            self.users["carol"]["id"]: [self.moderator_role["id"]],
        }
        self.channels: dict[str, dict[str, Any]] = {}
        for position, name in enumerate(("general", "edits", "random")):
            channel = self._text_channel(name, position)
            self.channels[name] = channel
        self._channels_by_id = {c["id"]: c for c in self.channels.values()}
        self.dm_channels: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_get("/gw", self._gateway)
        app.router.add_get("/gw/", self._gateway)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self._serve_attachment)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for session in list(self._sockets):
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gw"

    @property
    def upload_limit(self) -> int:
        return TIER_UPLOAD_LIMIT[self.premium_tier]

    async def wait_connected(self, within: float = 30.0) -> None:
        """Until a bot has identified and received its guild."""
        await asyncio.wait_for(self._connected.wait(), within)

    async def wait_disconnected(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while self._sockets:
            if time.monotonic() > deadline:
                raise TimeoutError("the bot is still connected to the gateway")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ model objects

    def _snowflake(self) -> str:
        """Real-looking snowflakes: creation time in the high bits, increasing."""
        value = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0x3FFFFF)
        self._last_id = max(value, self._last_id + 1)
        return str(self._last_id)

    def _user(self, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": self._snowflake(),
            "username": name,
            "discriminator": "0",
            "global_name": name.title(),
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }

    @staticmethod
    def _role(role_id: str, name: str, permissions: int, position: int) -> dict[str, Any]:
        return {
            "id": role_id,
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def _text_channel(self, name: str, position: int) -> dict[str, Any]:
        return {
            "id": self._snowflake(),
            "type": 0,
            "guild_id": self.guild_id,
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
        }

    def add_user(self, name: str) -> dict[str, Any]:
        """Another member of the guild (benchmarks simulate many users)."""
        self.users[name] = self._user(name)
        return self.users[name]

    def permissions_of(self, user_id: str) -> int:
        total = int(self.everyone_role["permissions"])
        for role in self.roles:
            if role["id"] in self.member_roles.get(user_id, []):
                total |= int(role["permissions"])
        return total

    def member(self, user: dict[str, Any], *, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user": user,
            "roles": list(self.member_roles.get(user["id"], [])),
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }
        if with_permissions:
            data["permissions"] = str(self.permissions_of(user["id"]))
        return data

    def guild_payload(self) -> dict[str, Any]:
        members = [self.member(self.bot_user)] + [self.member(u) for u in self.users.values()]
        return {
            "id": self.guild_id,
            "name": "Fake Guild",
            "owner_id": self.users["dave"]["id"],
            "roles": self.roles,
            "members": members,
            "member_count": len(members),
            "channels": [c for c in self._channels_by_id.values() if c["type"] == 0],
            "threads": [c for c in self._channels_by_id.values() if c["type"] == 11],
            "large": False,
            "unavailable": False,
            "emojis": [],
            "stickers": [],
            "features": [],
            "premium_tier": self.premium_tier,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": "2024-01-01T00:00:00+00:00",
        }

    def channel(self, channel_id: str) -> dict[str, Any] | None:
        return self._channels_by_id.get(channel_id) or self.dm_channels.get(channel_id)

    def dm_channel(self, user_name: str) -> dict[str, Any]:
        """The DM channel between the bot and a user (created on first use)."""
        user = self.users[user_name]
        for channel in self.dm_channels.values():
            if channel["recipients"][0]["id"] == user["id"]:
                return channel
        channel = {"id": self._snowflake(), "type": 1, "recipients": [user], "last_message_id": None}
        self.dm_channels[channel["id"]] = channel
        return channel

    def _is_guild_channel(self, channel_id: str) -> bool:
        return channel_id in self._channels_by_id

    def add_attachment(self, filename: str, data: bytes, content_type: str | None = None) -> dict[str, Any]:
        """Store bytes the way Discord's CDN would and return the attachment object."""
        attachment_id = self._snowflake()
        self.attachments[attachment_id] = data
        url = f"{self.base_url}/attachments/{attachment_id}/{filename}"
        attachment: dict[str, Any] = {
            "id": attachment_id,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream",
        }
        size = _image_size(data)
        if size is not None:
            attachment["width"], attachment["height"] = size
        return attachment

    def attachment_bytes(self, attachment: dict[str, Any]) -> bytes:
        return self.attachments[attachment["id"]]

    # ------------------------------------------------------------------ failures and waiting

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 500,
        times: int = 1,
        retry_after: float = 0.05,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``times`` matching REST calls with ``status`` (429s carry Via + retry_after)."""
        self._failures.append(
            FailureRule(method.upper(), re.compile(path_pattern), status, times, retry_after, body)
        )

    def _failure_for(self, method: str, path: str) -> web.Response | None:
        for rule in self._failures:
            if rule.remaining > 0 and rule.method in (method, "*") and rule.pattern.search(path):
                rule.remaining -= 1
                if rule.status == 429:
                    body = rule.body or {
                        "message": "You are being rate limited.",
                        "retry_after": rule.retry_after,
                        "global": False,
                    }
                    return _json_response(
                        body, 429, {"Via": "1.1 google", "Retry-After": str(rule.retry_after)}
                    )
                return _json_response(rule.body or {"message": "Injected failure", "code": 0}, rule.status)
        return None

    async def _record(self, record: Record) -> None:
        """Log a snapshot: the stored message keeps changing as the bot edits it."""
        record = dataclasses.replace(record, result=copy.deepcopy(record.result))
        async with self._log_changed:
            self.log.append(record)
            self._log_changed.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[Record], bool],
        within: float = 30.0,
        *,
        since: int = 0,
        description: str = "a matching request",
    ) -> Record:
        """The first record (from index ``since``) matching ``predicate``, waiting for it if needed."""
        deadline = time.monotonic() + within
        position = since
        async with self._log_changed:
            while True:
                for record in self.log[position:]:
                    if predicate(record):
                        return record
                position = len(self.log)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    recent = "\n".join(_describe(r) for r in self.log[since:][-15:])
                    raise TimeoutError(f"no {description} within {within}s; the last records:\n{recent}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._log_changed.wait(), remaining)

    async def wait_for_message(
        self,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        within: float = 30.0,
        *,
        since: int = 0,
        kinds: tuple[str, ...] = ("message",),
    ) -> dict[str, Any]:
        """A message the bot created (or edited, with ``kinds=("edit",)``) matching ``predicate``."""
        record = await self.wait_for(
            lambda r: r.kind in kinds and r.result is not None and predicate(r.result),
            within,
            since=since,
            description=f"bot message ({'/'.join(kinds)})",
        )
        assert record.result is not None
        return record.result

    def records(self, kind: str, since: int = 0) -> list[Record]:
        return [r for r in self.log[since:] if r.kind == kind]

    # ------------------------------------------------------------------ injecting events

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        for session in list(self._sockets):
            if session.identified:
                await session.send_dispatch(event, data)

    def _message_payload(
        self,
        *,
        channel_id: str,
        author: dict[str, Any],
        content: str,
        attachments: list[dict[str, Any]] | None = None,
        embeds: list[dict[str, Any]] | None = None,
        components: list[dict[str, Any]] | None = None,
        mentions: list[dict[str, Any]] | None = None,
        reference: dict[str, Any] | None = None,
        flags: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": self._snowflake(),
            "type": 19 if reference else 0,
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions or [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": embeds or [],
            "components": components or [],
            "pinned": False,
            "flags": flags,
        }
        if self._is_guild_channel(channel_id):
            message["guild_id"] = self.guild_id
        if reference is not None:
            message["message_reference"] = {
                "type": 0,
                "message_id": reference["id"],
                "channel_id": reference["channel_id"],
                **({"guild_id": self.guild_id} if "guild_id" in reference else {}),
            }
            # As Discord does: one level deep (the referenced message without its own reference).
            message["referenced_message"] = {k: v for k, v in reference.items() if k != "referenced_message"}
        message.update(extra or {})
        return message

    def _as_seen_by_bot(self, message: dict[str, Any]) -> dict[str, Any]:
        """Blank the content fields when the bot lacks the message content intent (Discord's rule)."""
        intents = self.identified_intents or 0
        has_content = intents & MESSAGE_CONTENT_INTENT
        exempt = (
            "guild_id" not in message
            or message["author"]["id"] == self.bot_user["id"]
            or any(m["id"] == self.bot_user["id"] for m in message["mentions"])
        )
        if has_content or exempt:
            return message
        return {**message, "content": "", "attachments": [], "embeds": [], "components": []}

    async def send_message(
        self,
        author: str,
        channel_id: str,
        content: str = "",
        *,
        files: list[tuple[str, bytes]] | None = None,
        reply_to: dict[str, Any] | None = None,
        mention_bot: bool = False,
        reply_ping: bool = True,
    ) -> dict[str, Any]:
        """A user posts a message: stored, then sent to the bot as MESSAGE_CREATE."""
        user = self.users[author]
        mentions = []
        if mention_bot:
            content = f"<@{self.bot_user['id']}> {content}".strip()
            mentions.append(self.bot_user)
        if (
            reply_to is not None
            and reply_ping
            and reply_to["author"]["id"] not in {m["id"] for m in mentions}
        ):
            mentions.append(reply_to["author"])
        attachments = [self.add_attachment(name, data) for name, data in files or []]
        message = self._message_payload(
            channel_id=channel_id,
            author=user,
            content=content,
            attachments=attachments,
            mentions=mentions,
            reference=reply_to,
        )
        if "guild_id" in message:
            message["member"] = {k: v for k, v in self.member(user).items() if k != "user"}
        self.messages[message["id"]] = message
        await self.dispatch("MESSAGE_CREATE", self._as_seen_by_bot(message))
        return message

    async def create_thread(self, author: str, channel_id: str, name: str) -> dict[str, Any]:
        """A user opens a public thread (without a starter message) in a text channel."""
        thread = self._thread_payload(self._snowflake(), channel_id, self.users[author]["id"], name, 1440)
        self._channels_by_id[thread["id"]] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    def _thread_payload(
        self, thread_id: str, parent_id: str, owner_id: str, name: str, auto_archive: int
    ) -> dict[str, Any]:
        return {
            "id": thread_id,
            "type": 11,
            "guild_id": self.guild_id,
            "parent_id": parent_id,
            "owner_id": owner_id,
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": auto_archive,
                "archive_timestamp": _now_iso(),
                "locked": False,
            },
            "flags": 0,
        }

    def _interaction(
        self,
        kind: int,
        user: str,
        channel_id: str,
        data: dict[str, Any],
        *,
        message: dict[str, Any] | None = None,
        attachment_size_limit: int | None = None,
    ) -> dict[str, Any]:
        user_data = self.users[user]
        channel = self.channel(channel_id)
        assert channel is not None, f"unknown channel {channel_id}"
        payload: dict[str, Any] = {
            "id": self._snowflake(),
            "type": kind,
            "token": f"tok-{self._snowflake()}",
            "version": 1,
            "application_id": self.application_id,
            "data": data,
            "channel_id": channel_id,
            "channel": channel,
            "locale": "en-US",
            "app_permissions": str(self.permissions_of(self.bot_user["id"])),
            "attachment_size_limit": attachment_size_limit or self.upload_limit,
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0 if self._is_guild_channel(channel_id) else 1,
        }
        if self._is_guild_channel(channel_id):
            payload["guild_id"] = self.guild_id
            payload["guild"] = {"id": self.guild_id, "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            payload["member"] = self.member(user_data, with_permissions=True)
        else:
            payload["user"] = user_data
        if message is not None:
            payload["message"] = message
        self.interactions[payload["token"]] = Interaction(payload, channel_id)
        return payload

    def command(self, name: str, kind: int = 1) -> dict[str, Any]:
        for command in self.commands.values():
            if command["name"] == name and command.get("type", 1) == kind:
                return command
        raise AssertionError(f"the bot has not registered the command {name!r} (type {kind})")

    async def slash_command(
        self,
        user: str,
        channel_id: str,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        files: dict[str, tuple[str, bytes]] | None = None,
        attachment_size_limit: int | None = None,
    ) -> dict[str, Any]:
        """Invoke a registered slash command; ``files`` maps attachment options to (name, bytes).

        ``name`` may name a subcommand: ``"settings show"``.
        """
        top, *path = name.split()
        command = self.command(top)
        declared_list = command.get("options", [])
        kinds = []
        for sub in path:
            found = [o for o in declared_list if o["name"] == sub and o["type"] in (1, 2)]
            assert found, f"/{top} has no subcommand {sub!r}"
            declared_list = found[0].get("options", [])
            kinds.append((sub, found[0]["type"]))
        declared = {o["name"]: o for o in declared_list}
        resolved_attachments: dict[str, Any] = {}
        option_list: list[dict[str, Any]] = []
        for option_name, value in (options or {}).items():
            assert option_name in declared, f"/{name} has no option {option_name!r}"
            option_list.append({"name": option_name, "type": declared[option_name]["type"], "value": value})
        for option_name, (filename, data_bytes) in (files or {}).items():
            assert option_name in declared, f"/{name} has no option {option_name!r}"
            attachment = self.add_attachment(filename, data_bytes)
            resolved_attachments[attachment["id"]] = attachment
            option_list.append({"name": option_name, "type": 11, "value": attachment["id"]})
        for sub, kind in reversed(kinds):
            option_list = [{"name": sub, "type": kind, "options": option_list}]
        data: dict[str, Any] = {"id": command["id"], "name": top, "type": 1, "options": option_list}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved_attachments:
            data["resolved"] = {"attachments": resolved_attachments}
        payload = self._interaction(
            APPLICATION_COMMAND, user, channel_id, data, attachment_size_limit=attachment_size_limit
        )
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def message_command(self, user: str, name: str, target: dict[str, Any]) -> dict[str, Any]:
        """Invoke a message context-menu command on ``target`` (its content is always delivered)."""
        command = self.command(name, kind=3)
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        payload = self._interaction(APPLICATION_COMMAND, user, target["channel_id"], data)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    def modal_inputs(self, opened_by: dict[str, Any]) -> list[str]:
        """The custom ids of the text inputs of the modal the bot opened for ``opened_by``."""
        modal = self.interactions[opened_by["token"]].modal
        assert modal is not None, "the bot did not answer that interaction with a modal"
        found = []
        for row in modal.get("components", []):
            children = row.get("components") or [row.get("component") or {}]
            found += [c["custom_id"] for c in children if c.get("type") == 4]
        return found

    async def submit_modal(
        self, user: str, opened_by: dict[str, Any], values: dict[str, str]
    ) -> dict[str, Any]:
        """Submit the modal the bot opened in answer to interaction ``opened_by``.

        Like a person typing, this takes a moment: discord.py starts listening for the modal
        only once Discord has answered its request to open it.
        """
        modal = self.interactions[opened_by["token"]].modal
        assert modal is not None, "the bot did not answer that interaction with a modal"
        await asyncio.sleep(TYPING_S)
        rows = []
        for custom_id, value in values.items():
            rows.append({"type": 1, "components": [{"type": 4, "custom_id": custom_id, "value": value}]})
        data = {"custom_id": modal["custom_id"], "components": rows}
        channel_id = opened_by["channel_id"]
        payload = self._interaction(MODAL_SUBMIT, user, channel_id, data)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def click(self, user: str, message: dict[str, Any], custom_id: str) -> dict[str, Any]:
        """Click the button ``custom_id`` on a bot message (the current stored version of it)."""
        current = self.messages.get(message["id"], message)
        ids = [c.get("custom_id") for row in current.get("components", []) for c in row.get("components", [])]
        assert custom_id in ids, f"no button {custom_id!r} on message {message['id']}; buttons: {ids}"
        data = {"custom_id": custom_id, "component_type": 2}
        payload = self._interaction(MESSAGE_COMPONENT, user, current["channel_id"], data, message=current)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    # ------------------------------------------------------------------ HTTP: attachments

    async def _serve_attachment(self, request: web.Request) -> web.StreamResponse:
        data = self.attachments.get(request.match_info["attachment_id"])
        if data is None:
            return web.Response(status=404, text="Not found")
        content_type = mimetypes.guess_type(request.match_info["filename"])[0] or "application/octet-stream"
        return web.Response(body=data, content_type=content_type)

    # ------------------------------------------------------------------ HTTP: REST API

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        method = request.method
        is_webhook = path.startswith(("/webhooks/", "/interactions/"))
        if not is_webhook and request.headers.get("Authorization") != f"Bot {self.token}":
            return _error(401, 0, "401: Unauthorized")
        failure = self._failure_for(method, path)
        if failure is not None:
            await self._record(
                Record("failed", method, path, None, (), {"status": failure.status}, time.monotonic())
            )
            return failure
        body, files = await _read_body(request)
        for pattern, route_method, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return await handler(Call(method, request.path, request.query, body, files, match.groups()))
        await self._record(Record("unhandled", method, path, body, files, None, time.monotonic()))
        return _error(404, 0, f"404: Not Found ({method} {path})")

    def _routes(self) -> list[tuple[str, str, Callable[[Call], Awaitable[web.StreamResponse]]]]:
        snowflake = r"(\d+)"
        token = r"([^/]+)"
        return [
            ("/users/@me", "GET", self._get_me),
            ("/oauth2/applications/@me", "GET", self._get_application),
            ("/gateway", "GET", self._get_gateway),
            ("/gateway/bot", "GET", self._get_gateway),
            (f"/applications/{snowflake}/commands", "PUT", self._put_commands),
            (f"/applications/{snowflake}/guilds/{snowflake}/commands", "PUT", self._put_commands),
            (f"/applications/{snowflake}/commands", "GET", self._get_commands),
            (f"/applications/{snowflake}/guilds/{snowflake}/commands", "GET", self._get_commands),
            (f"/channels/{snowflake}", "GET", self._get_channel),
            (f"/channels/{snowflake}/messages", "POST", self._create_message),
            (f"/channels/{snowflake}/messages", "GET", self._list_messages),
            (f"/channels/{snowflake}/messages/{snowflake}", "GET", self._get_message),
            (f"/channels/{snowflake}/messages/{snowflake}", "PATCH", self._edit_message),
            (f"/channels/{snowflake}/messages/{snowflake}", "DELETE", self._delete_message),
            (f"/channels/{snowflake}/messages/{snowflake}/threads", "POST", self._create_thread),
            (f"/channels/{snowflake}/typing", "POST", self._typing),
            (f"/channels/{snowflake}/messages/{snowflake}/reactions/([^/]+)/@me", "PUT", self._add_reaction),
            (
                f"/channels/{snowflake}/messages/{snowflake}/reactions/([^/]+)/@me",
                "DELETE",
                self._remove_reaction,
            ),
            ("/users/@me/channels", "POST", self._create_dm),
            (f"/interactions/{snowflake}/{token}/callback", "POST", self._interaction_callback),
            (f"/webhooks/{snowflake}/{token}", "POST", self._followup),
            (f"/webhooks/{snowflake}/{token}/messages/(@original|\\d+)", "GET", self._get_webhook_message),
            (f"/webhooks/{snowflake}/{token}/messages/(@original|\\d+)", "PATCH", self._edit_webhook_message),
            (
                f"/webhooks/{snowflake}/{token}/messages/(@original|\\d+)",
                "DELETE",
                self._delete_webhook_message,
            ),
        ]

    async def _get_me(self, call: Call) -> web.Response:
        return _json_response({**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_application(self, call: Call) -> web.Response:
        return _json_response(
            {
                "id": self.application_id,
                "name": "Editbot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.users["dave"],
                "verify_key": "0" * 64,
                "flags": 0,
            }
        )

    async def _get_gateway(self, call: Call) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _put_commands(self, call: Call) -> web.Response:
        _application_id, *optional = call.args
        guild_id = optional[0] if optional else None
        body = call.body
        # Re-syncing replaces the previous set of that scope.
        for command_id in [i for i, c in self.commands.items() if c.get("guild_id") == guild_id]:
            del self.commands[command_id]
        answer = []
        for command in body or []:
            stored = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                **command,
                "id": self._snowflake(),
                "application_id": self.application_id,
                "version": self._snowflake(),
            }
            if guild_id:
                stored["guild_id"] = guild_id
            self.commands[stored["id"]] = stored
            answer.append(stored)
        await self._record(
            Record("commands", "PUT", call.path, body, (), {"commands": answer}, time.monotonic())
        )
        return _json_response(answer)

    async def _get_commands(self, call: Call) -> web.Response:
        _application_id, *optional = call.args
        guild_id = optional[0] if optional else None
        return _json_response([c for c in self.commands.values() if c.get("guild_id") == guild_id])

    async def _get_channel(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        channel = self.channel(channel_id)
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        return _json_response(channel)

    def _validate_message(
        self, body: dict[str, Any], files: tuple[UploadedFile, ...], limit: int
    ) -> web.Response | None:
        """Discord's own checks on a message body: length, components, upload size."""
        content = body.get("content") or ""
        if len(content) > MAX_CONTENT:
            return _error(
                400, 50035, "Invalid Form Body", errors={"content": "Must be 2000 or fewer in length."}
            )
        rows = body.get("components") or []
        if len(rows) > 5 or any(len(row.get("components", [])) > 5 for row in rows):
            return _error(400, 50035, "Invalid Form Body", errors={"components": "Too many components."})
        for row in rows:
            for component in row.get("components", []):
                if len(component.get("custom_id") or "") > MAX_CUSTOM_ID:
                    return _error(400, 50035, "Invalid Form Body", errors={"custom_id": "Too long."})
        if any(len(f.data) > limit for f in files):
            return _error(413, 40005, "Request entity too large")
        return None

    def _attachments_for(
        self, body: dict[str, Any], files: tuple[UploadedFile, ...], previous: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """New attachment list: kept old ones by id, plus uploaded ``files[N]`` for ``{"id": N}``."""
        if "attachments" not in body:
            return [self.add_attachment(f.filename, f.data) for f in files] or previous
        by_field = {f.field: f for f in files}
        old = {a["id"]: a for a in previous}
        result = []
        for entry in body["attachments"]:
            entry_id = str(entry["id"])
            if entry_id in old:
                result.append(old[entry_id])
            elif f"files[{entry_id}]" in by_field:
                uploaded = by_field[f"files[{entry_id}]"]
                result.append(self.add_attachment(entry.get("filename") or uploaded.filename, uploaded.data))
        return result

    def _bot_message(
        self, channel_id: str, body: dict[str, Any], files: tuple[UploadedFile, ...], **extra: Any
    ) -> dict[str, Any]:
        reference = None
        ref = body.get("message_reference")
        if ref:
            reference = self.messages.get(str(ref["message_id"]))
        message = self._message_payload(
            channel_id=channel_id,
            author=self.bot_user,
            content=body.get("content") or "",
            attachments=self._attachments_for(body, files, []),
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            reference=reference,
            flags=int(body.get("flags") or 0),
            extra=extra,
        )
        message["allowed_mentions"] = body.get("allowed_mentions")
        self.messages[message["id"]] = message
        return message

    async def _publish(self, message: dict[str, Any]) -> None:
        if not message["flags"] & EPHEMERAL:
            await self.dispatch(
                "MESSAGE_CREATE", {k: v for k, v in message.items() if k != "allowed_mentions"}
            )

    async def _create_message(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        body, files = call.body, call.files
        if self.channel(channel_id) is None:
            return _error(404, 10003, "Unknown Channel")
        limit = self.upload_limit if self._is_guild_channel(channel_id) else TIER_UPLOAD_LIMIT[0]
        problem = self._validate_message(body, files, limit)
        if problem is not None:
            await self._record(Record("rejected", "POST", call.path, body, files, None, time.monotonic()))
            return problem
        ref = body.get("message_reference")
        if ref and str(ref["message_id"]) not in self.messages and ref.get("fail_if_not_exists", True):
            return _error(400, 50035, "Invalid Form Body", errors={"message_reference": "Unknown message"})
        message = self._bot_message(channel_id, body, files)
        await self._record(Record("message", "POST", call.path, body, files, message, time.monotonic()))
        await self._publish(message)
        return _json_response(message)

    async def _list_messages(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        limit = int(call.query.get("limit", 50))
        found = [m for m in self.messages.values() if m["channel_id"] == channel_id]
        found.sort(key=lambda m: int(m["id"]), reverse=True)
        return _json_response(found[:limit])

    async def _get_message(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return _error(404, 10008, "Unknown Message")
        return _json_response(self._as_seen_by_bot(message))

    async def _apply_edit(
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
        message["attachments"] = self._attachments_for(body, files, message["attachments"])
        message["edited_timestamp"] = _now_iso()
        if "allowed_mentions" in body:
            message["allowed_mentions"] = body["allowed_mentions"]
        snapshot = json.loads(json.dumps(message))
        await self._record(Record("edit", method, path, body, files, snapshot, time.monotonic()))
        if not message["flags"] & EPHEMERAL:
            await self.dispatch(
                "MESSAGE_UPDATE", {k: v for k, v in snapshot.items() if k != "allowed_mentions"}
            )
        return snapshot

    async def _edit_message(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        body, files = call.body, call.files
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return _error(404, 10008, "Unknown Message")
        if message["author"]["id"] != self.bot_user["id"]:
            return _error(403, 50005, "Cannot edit a message authored by another user")
        problem = self._validate_message(body, files, self.upload_limit)
        if problem is not None:
            return problem
        return _json_response(await self._apply_edit(message, body, files, call.path, "PATCH"))

    async def _delete_message(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        message = self.messages.pop(message_id, None)
        if message is None:
            return _error(404, 10008, "Unknown Message")
        await self._record(Record("delete", "DELETE", call.path, None, (), message, time.monotonic()))
        await self.dispatch(
            "MESSAGE_DELETE", {"id": message_id, "channel_id": channel_id, "guild_id": self.guild_id}
        )
        return web.Response(status=204)

    async def _create_thread(self, call: Call) -> web.Response:
        channel_id, message_id = call.args
        body = call.body
        parent = self._channels_by_id.get(channel_id)
        if parent is None or parent["type"] != 0:
            return _error(400, 50024, "Cannot execute action on this channel type")
        if message_id not in self.messages:
            return _error(404, 10008, "Unknown Message")
        # Discord gives a thread started from a message that message's id.
        thread = self._thread_payload(
            message_id, channel_id, self.bot_user["id"], body["name"], body.get("auto_archive_duration", 1440)
        )
        self._channels_by_id[thread["id"]] = thread
        self.messages[message_id]["thread"] = thread
        await self._record(Record("thread", "POST", call.path, body, (), thread, time.monotonic()))
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return _json_response(thread, 201)

    async def _typing(self, call: Call) -> web.Response:
        (channel_id,) = call.args
        await self._record(
            Record("typing", "POST", call.path, None, (), {"channel_id": channel_id}, time.monotonic())
        )
        return web.Response(status=204)

    async def _add_reaction(self, call: Call) -> web.Response:
        _channel_id, message_id, emoji = call.args
        self.reactions.append((message_id, emoji))
        result = {"message_id": message_id, "emoji": emoji}
        await self._record(Record("reaction", "PUT", call.path, None, (), result, time.monotonic()))
        return web.Response(status=204)

    async def _remove_reaction(self, call: Call) -> web.Response:
        _channel_id, message_id, emoji = call.args
        with contextlib.suppress(ValueError):
            self.reactions.remove((message_id, emoji))
        result = {"message_id": message_id, "emoji": emoji}
        await self._record(Record("unreaction", "DELETE", call.path, None, (), result, time.monotonic()))
        return web.Response(status=204)

    async def _create_dm(self, call: Call) -> web.Response:
        body = call.body
        for name, user in self.users.items():
            if user["id"] == str(body["recipient_id"]):
                return _json_response(self.dm_channel(name))
        return _error(400, 50007, "Cannot send messages to this user")

    # ------------------------------------------------------------------ HTTP: interactions and webhooks

    async def _interaction_callback(self, call: Call) -> web.Response:
        interaction_id, token = call.args
        body, files = call.body, call.files
        interaction = self.interactions.get(token)
        if interaction is None or interaction.payload["id"] != interaction_id:
            return _error(404, 10062, "Unknown interaction")
        if interaction.responded is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        kind = body["type"]
        data = body.get("data") or {}
        problem = self._validate_message(data, files, interaction.payload["attachment_size_limit"])
        if problem is not None:
            return problem
        interaction.responded = kind
        message: dict[str, Any] | None = None
        metadata = {
            "interaction_metadata": {
                "id": interaction.payload["id"],
                "type": interaction.payload["type"],
                "user": self._interaction_user(interaction),
                "authorizing_integration_owners": {},
            },
            "webhook_id": self.application_id,
            "application_id": self.application_id,
        }
        if kind == CHANNEL_MESSAGE:
            message = self._bot_message(interaction.channel_id, data, files, **metadata)
            interaction.original_message_id = message["id"]
            await self._record(Record("message", "POST", call.path, data, files, message, time.monotonic()))
            await self._publish(message)
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            message = self._bot_message(interaction.channel_id, {"flags": flags}, (), **metadata)
            interaction.original_message_id = message["id"]
        elif kind in (DEFERRED_UPDATE, UPDATE_MESSAGE) and "message" in interaction.payload:
            interaction.original_message_id = interaction.payload["message"]["id"]
            if kind == UPDATE_MESSAGE:
                target = self.messages[interaction.original_message_id]
                message = await self._apply_edit(target, data, files, call.path, "POST")
        elif kind == MODAL:
            interaction.modal = data
        record_result = {"type": kind, "data": data, "message": message, "interaction": interaction.payload}
        await self._record(
            Record("callback", "POST", call.path, body, files, record_result, time.monotonic())
        )
        if call.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            resource["message"] = message
        answer = {
            "interaction": {
                "id": interaction_id,
                "type": interaction.payload["type"],
                "response_message_id": interaction.original_message_id,
                "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL),
            },
            "resource": resource,
        }
        return _json_response(answer)

    def _interaction_user(self, interaction: Interaction) -> dict[str, Any]:
        payload = interaction.payload
        return payload["member"]["user"] if "member" in payload else payload["user"]

    async def _followup(self, call: Call) -> web.Response:
        application_id, token = call.args
        body, files = call.body, call.files
        interaction = self.interactions.get(token)
        if interaction is None or application_id != self.application_id:
            return _error(404, 10015, "Unknown Webhook")
        if interaction.responded is None:
            return _error(400, 40060, "Interaction has not been acknowledged.")
        problem = self._validate_message(body, files, interaction.payload["attachment_size_limit"])
        if problem is not None:
            return problem
        message = self._bot_message(
            interaction.channel_id,
            body,
            files,
            webhook_id=self.application_id,
            application_id=self.application_id,
        )
        interaction.followups.append(message["id"])
        await self._record(Record("message", "POST", call.path, body, files, message, time.monotonic()))
        await self._publish(message)
        return _json_response(message)

    def _webhook_target(self, application_id: str, token: str, which: str) -> dict[str, Any] | None:
        interaction = self.interactions.get(token)
        if interaction is None or application_id != self.application_id:
            return None
        message_id = interaction.original_message_id if which == "@original" else which
        return self.messages.get(message_id or "")

    async def _get_webhook_message(self, call: Call) -> web.Response:
        application_id, token, which = call.args
        message = self._webhook_target(application_id, token, which)
        if message is None:
            return _error(404, 10008, "Unknown Message")
        return _json_response(message)

    async def _edit_webhook_message(self, call: Call) -> web.Response:
        application_id, token, which = call.args
        body, files = call.body, call.files
        message = self._webhook_target(application_id, token, which)
        if message is None:
            return _error(404, 10008, "Unknown Message")
        problem = self._validate_message(
            body, files, self.interactions[token].payload["attachment_size_limit"]
        )
        if problem is not None:
            return problem
        was_loading = bool(message["flags"] & LOADING)
        edited = await self._apply_edit(message, body, files, call.path, "PATCH")
        if was_loading:
            # The "thinking" placeholder turning into the answer reads, for a user, as a new message.
            await self._record(Record("message", "PATCH", call.path, body, files, edited, time.monotonic()))
        return _json_response(edited)

    async def _delete_webhook_message(self, call: Call) -> web.Response:
        application_id, token, which = call.args
        message = self._webhook_target(application_id, token, which)
        if message is None:
            return _error(404, 10008, "Unknown Message")
        del self.messages[message["id"]]
        await self._record(Record("delete", "DELETE", call.path, None, (), message, time.monotonic()))
        return web.Response(status=204)

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        # Discord's gateway compresses (zlib-stream) only when asked in the URL, never per message.
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=0, compress=False)
        await ws.prepare(request)
        session = _GatewaySession(self, ws)
        self._sockets.append(session)
        try:
            await session.run()
        finally:
            self._sockets.remove(session)
            if not any(s.identified for s in self._sockets):
                self._connected.clear()
        return ws

    async def _on_identify(self, session: _GatewaySession, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & MESSAGE_CONTENT_INTENT and not self.grant_message_content:
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self.identified_intents = intents
        session.identified = True
        session.session_id = f"session-{self._snowflake()}"
        ready = {
            "v": 10,
            "user": {**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "shard": [0, 1],
        }
        await session.send_dispatch("READY", ready)
        await session.send_dispatch("GUILD_CREATE", self.guild_payload())
        self._connected.set()


class _GatewaySession:
    """One websocket connection from the bot: HELLO, heartbeats, IDENTIFY/RESUME, dispatches."""

    HEARTBEAT_INTERVAL_MS = 41_250

    def __init__(self, fake: FakeDiscord, ws: web.WebSocketResponse):
        self.fake = fake
        self.ws = ws
        self.sequence = 0
        self.identified = False
        self.session_id: str | None = None
        self._send_lock = asyncio.Lock()
        self._acks: set[asyncio.Task[None]] = set()

    async def _send(self, payload: dict[str, Any]) -> None:
        async with self._send_lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(payload))

    async def _ack_later(self) -> None:
        """ACK a heartbeat after a network-like pause.

        discord.py records when it sent a heartbeat only after the send completes; an ACK
        arriving sooner (easy on 127.0.0.1) is measured against the previous heartbeat and
        logged as "Can't keep up ... 41.3s behind".
        """
        await asyncio.sleep(HEARTBEAT_ACK_DELAY_S)
        await self._send({"op": 11})
        self._acks.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def send_dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.sequence += 1
        await self._send({"op": 0, "t": event, "s": self.sequence, "d": data})

    async def run(self) -> None:
        await self._send({"op": 10, "d": {"heartbeat_interval": self.HEARTBEAT_INTERVAL_MS}})
        async for frame in self.ws:
            if frame.type != WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            op, data = message.get("op"), message.get("d")
            if op == 1:
                self._acks.add(asyncio.create_task(self._ack_later()))
            elif op == 2:
                await self.fake._on_identify(self, data)
            elif op == 6:
                self.identified = True
                await self.send_dispatch("RESUMED", {})
            elif op == 8:
                chunk = {
                    "guild_id": self.fake.guild_id,
                    "members": self.fake.guild_payload()["members"],
                    "chunk_index": 0,
                    "chunk_count": 1,
                    "nonce": (data or {}).get("nonce"),
                }
                await self.send_dispatch("GUILD_MEMBERS_CHUNK", chunk)


async def _read_body(request: web.Request) -> tuple[Any, tuple[UploadedFile, ...]]:
    """JSON body, or multipart ``payload_json`` plus ``files[N]`` (bytes kept)."""
    if request.content_type.startswith("multipart/"):
        body: Any = None
        files = []
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""
            data = await part.read()  # type: ignore[union-attr]
            if name == "payload_json":
                body = json.loads(bytes(data))
            else:
                files.append(UploadedFile(name, part.filename or name, bytes(data)))  # type: ignore[union-attr]
        return body or {}, tuple(files)
    raw = await request.read()
    return (json.loads(raw) if raw else None), ()


def _describe(record: Record) -> str:
    result = record.result or {}
    reference = (result.get("message_reference") or {}).get("message_id")
    return (
        f"{record.kind} {record.method} {record.path} id={result.get('id')} reply_to={reference} "
        f"files={len(result.get('attachments') or [])} {str(result.get('content', ''))[:70]!r}"
    )


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height when the bytes are an image Pillow can identify (Discord reports them)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def buttons(message: dict[str, Any]) -> dict[str, str]:
    """Label -> custom_id of every button on a message."""
    return {
        c.get("label") or "": c.get("custom_id") or ""
        for row in message.get("components", [])
        for c in row.get("components", [])
        if c.get("type") == 2
    }
