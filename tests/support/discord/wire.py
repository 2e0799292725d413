"""Discord's wire format as the fake speaks it: documented constants and limits, request bodies, replies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, web

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

# Message flags, interaction types and interaction callback types.
EPHEMERAL = 1 << 6
LOADING = 1 << 7
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL = 4, 5, 6, 7, 9

#: Upload limit by guild premium tier, as Discord documents it.
TIER_UPLOAD_LIMIT = {0: 10 * 1024 * 1024, 1: 10 * 1024 * 1024, 2: 50 * 1024 * 1024, 3: 100 * 1024 * 1024}
MAX_CONTENT = 2000
MAX_CUSTOM_ID = 100


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


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """discord.py only parses a body as JSON when Content-Type is exactly application/json."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def error(status: int, code: int, message: str, **extra: Any) -> web.Response:
    return json_response({"code": code, "message": message, **extra}, status=status)


async def read_body(request: web.Request) -> tuple[Any, tuple[UploadedFile, ...]]:
    """JSON body, or multipart ``payload_json`` plus ``files[N]`` (bytes kept)."""
    if request.content_type.startswith("multipart/"):
        body: Any = None
        files = []
        reader = await request.multipart()
        async for part in reader:
            assert isinstance(part, BodyPartReader), "discord.py never nests multipart bodies"
            name = part.name or ""
            data = await part.read()
            if name == "payload_json":
                body = json.loads(bytes(data))
            else:
                files.append(UploadedFile(name, part.filename or name, bytes(data)))
        return body or {}, tuple(files)
    raw = await request.read()
    return (json.loads(raw) if raw else None), ()


def validate_message(
    body: dict[str, Any], files: tuple[UploadedFile, ...], limit: int
) -> web.Response | None:
    """Discord's own checks on a message body: length, components, upload size."""
    content = body.get("content") or ""
    if len(content) > MAX_CONTENT:
        return error(400, 50035, "Invalid Form Body", errors={"content": "Must be 2000 or fewer in length."})
    rows = body.get("components") or []
    if len(rows) > 5 or any(len(row.get("components", [])) > 5 for row in rows):
        return error(400, 50035, "Invalid Form Body", errors={"components": "Too many components."})
    for row in rows:
        for component in row.get("components", []):
            if len(component.get("custom_id") or "") > MAX_CUSTOM_ID:
                return error(400, 50035, "Invalid Form Body", errors={"custom_id": "Too long."})
    if any(len(f.data) > limit for f in files):
        return error(413, 40005, "Request entity too large")
    return None


MAX_MODAL_TITLE = 45
MAX_INPUT_LABEL = 45
MAX_INPUT_VALUE = 4000
MAX_PLACEHOLDER = 100


def validate_modal(data: dict[str, Any]) -> web.Response | None:
    """Discord's checks on a modal: title, custom id, rows, and each text input's limits."""
    problems = []
    if not 1 <= len(data.get("title") or "") <= MAX_MODAL_TITLE:
        problems.append("title")
    if not 1 <= len(data.get("custom_id") or "") <= MAX_CUSTOM_ID:
        problems.append("custom_id")
    rows = data.get("components") or []
    if not 1 <= len(rows) <= 5:
        problems.append("components")
    for row in rows:
        for field in row.get("components") or [row.get("component") or {}]:
            if field.get("type") != 4:
                continue
            label, value = field.get("label") or "", field.get("value") or ""
            low, high = field.get("min_length", 0), field.get("max_length", MAX_INPUT_VALUE)
            if not 1 <= len(label) <= MAX_INPUT_LABEL or len(value) > min(high, MAX_INPUT_VALUE):
                problems.append(f"text input {field.get('custom_id')}")
            if not 0 <= low <= MAX_INPUT_VALUE or not 1 <= high <= MAX_INPUT_VALUE:
                problems.append(f"text input {field.get('custom_id')} lengths")
            if len(field.get("placeholder") or "") > MAX_PLACEHOLDER:
                problems.append(f"text input {field.get('custom_id')} placeholder")
    if problems:
        return error(400, 50035, "Invalid Form Body", errors={"modal": ", ".join(problems)})
    return None


def buttons(message: dict[str, Any]) -> dict[str, str]:
    """Label -> custom_id of every button on a message."""
    return {
        c.get("label") or "": c.get("custom_id") or ""
        for row in message.get("components", [])
        for c in row.get("components", [])
        if c.get("type") == 2
    }
