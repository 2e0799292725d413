"""What the fake Discord knows: one guild, its members, roles and channels, messages and attachments.

Everything is kept as the JSON objects Discord sends (snowflakes as strings), so the
gateway and REST sides hand them out as they are.
"""

from __future__ import annotations

import io
import itertools
import mimetypes
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.discord.wire import (
    API_PREFIX,
    DISCORD_EPOCH_MS,
    EVERYONE_PERMISSIONS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MESSAGE_CONTENT_INTENT,
    TIER_UPLOAD_LIMIT,
    UploadedFile,
    now_iso,
)


@dataclass
class Interaction:
    """An interaction a user started, and how the bot has answered it so far."""

    payload: dict[str, Any]
    channel_id: str
    responded: int | None = None
    original_message_id: str | None = None
    modal: dict[str, Any] | None = None
    followups: list[str] = field(default_factory=list)


class DiscordState:
    """The guild "Fake Guild" with the bot, alice, bob, carol (moderator) and dave (owner)."""

    def __init__(self, *, premium_tier: int = 0) -> None:
        self._ids = itertools.count(1)
        self._last_id = 0
        #: Where the fake is served (set when it starts); attachment URLs point there.
        self.base_url = ""
        self.attachments: dict[str, bytes] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, dict[str, Any]] = {}
        self.reactions: list[tuple[str, str]] = []
        #: Per attachment id, what its next downloads run into ("hang", "reset"), in order.
        self.download_faults: dict[str, list[str]] = {}

        self.bot_user = self._user("editbot", bot=True)
        self.application_id = self.bot_user["id"]
        self.users = {name: self._user(name) for name in ("alice", "bob", "carol", "dave")}
        self.guild_id = self.snowflake()
        self.premium_tier = premium_tier
        self.everyone_role = self._role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
        self.moderator_role = self._role(self.snowflake(), "Moderator", MANAGE_GUILD | MANAGE_MESSAGES, 1)
        self.bot_role = self._role(self.snowflake(), "Editbot", EVERYONE_PERMISSIONS, 2)
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
        #: Text channels and threads of the guild by id.
        self.guild_channels = {c["id"]: c for c in self.channels.values()}
        self.dm_channels: dict[str, dict[str, Any]] = {}

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/gw"

    @property
    def upload_limit(self) -> int:
        return TIER_UPLOAD_LIMIT[self.premium_tier]

    def snowflake(self) -> str:
        """Real-looking snowflakes: creation time in the high bits, increasing."""
        value = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0x3FFFFF)
        self._last_id = max(value, self._last_id + 1)
        return str(self._last_id)

    # ------------------------------------------------------------------ members, roles, channels

    def _user(self, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": self.snowflake(),
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
            "id": self.snowflake(),
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
            "channels": [c for c in self.guild_channels.values() if c["type"] == 0],
            "threads": [c for c in self.guild_channels.values() if c["type"] == 11],
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
        return self.guild_channels.get(channel_id) or self.dm_channels.get(channel_id)

    def dm_channel(self, user_name: str) -> dict[str, Any]:
        """The DM channel between the bot and a user (created on first use)."""
        user = self.users[user_name]
        for channel in self.dm_channels.values():
            if channel["recipients"][0]["id"] == user["id"]:
                return channel
        channel = {"id": self.snowflake(), "type": 1, "recipients": [user], "last_message_id": None}
        self.dm_channels[channel["id"]] = channel
        return channel

    def is_guild_channel(self, channel_id: str) -> bool:
        return channel_id in self.guild_channels

    def thread_payload(
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
                "archive_timestamp": now_iso(),
                "locked": False,
            },
            "flags": 0,
        }

    # ------------------------------------------------------------------ attachments and messages

    def add_attachment(self, filename: str, data: bytes, content_type: str | None = None) -> dict[str, Any]:
        """Store bytes the way Discord's CDN would and return the attachment object."""
        attachment_id = self.snowflake()
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

    def message_payload(
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
            "id": self.snowflake(),
            "type": 19 if reference else 0,
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": now_iso(),
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
        if self.is_guild_channel(channel_id):
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

    def as_seen_by_bot(self, message: dict[str, Any], intents: int | None) -> dict[str, Any]:
        """Blank the content fields when the bot lacks the message content intent (Discord's rule)."""
        has_content = (intents or 0) & MESSAGE_CONTENT_INTENT
        exempt = (
            "guild_id" not in message
            or message["author"]["id"] == self.bot_user["id"]
            or any(m["id"] == self.bot_user["id"] for m in message["mentions"])
        )
        if has_content or exempt:
            return message
        return {**message, "content": "", "attachments": [], "embeds": [], "components": []}

    def attachments_for(
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

    def bot_message(
        self, channel_id: str, body: dict[str, Any], files: tuple[UploadedFile, ...], **extra: Any
    ) -> dict[str, Any]:
        """Store a message the bot sent (a REST body) as Discord would."""
        reference = None
        ref = body.get("message_reference")
        if ref:
            reference = self.messages.get(str(ref["message_id"]))
        message = self.message_payload(
            channel_id=channel_id,
            author=self.bot_user,
            content=body.get("content") or "",
            attachments=self.attachments_for(body, files, []),
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            reference=reference,
            flags=int(body.get("flags") or 0),
            extra=extra,
        )
        message["allowed_mentions"] = body.get("allowed_mentions")
        self.messages[message["id"]] = message
        return message


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height when the bytes are an image Pillow can identify (Discord reports them)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None
