"""The fake's interaction endpoints: the bot answers an interaction, then follows up by webhook."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tests.support.discord.rest import SNOWFLAKE, RestApi, Route
from tests.support.discord.state import Interaction
from tests.support.discord.wire import (
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE,
    EPHEMERAL,
    LOADING,
    MODAL,
    UPDATE_MESSAGE,
    Call,
    Record,
    error,
    json_response,
    validate_message,
    validate_modal,
)

TOKEN = r"([^/]+)"


class InteractionApi:
    """``/interactions/.../callback`` and ``/webhooks/...``: no bot token, the interaction's instead.

    Discord's acknowledgement rules hold: one callback per interaction, follow-ups only after it.
    """

    def __init__(self, rest: RestApi) -> None:
        self.rest = rest
        self.state = rest.state
        self.journal = rest.journal

    def routes(self) -> list[Route]:
        webhook_message = f"/webhooks/{SNOWFLAKE}/{TOKEN}/messages/(@original|\\d+)"
        return [
            (f"/interactions/{SNOWFLAKE}/{TOKEN}/callback", "POST", self._callback),
            (f"/webhooks/{SNOWFLAKE}/{TOKEN}", "POST", self._followup),
            (webhook_message, "GET", self._get_webhook_message),
            (webhook_message, "PATCH", self._edit_webhook_message),
            (webhook_message, "DELETE", self._delete_webhook_message),
        ]

    async def _callback(self, call: Call) -> web.Response:
        interaction_id, token = call.args
        body, files = call.body, call.files
        interaction = self.state.interactions.get(token)
        if interaction is None or interaction.payload["id"] != interaction_id:
            return error(404, 10062, "Unknown interaction")
        if interaction.responded is not None:
            return error(400, 40060, "Interaction has already been acknowledged.")
        kind = body["type"]
        data = body.get("data") or {}
        problem = validate_message(data, files, interaction.payload["attachment_size_limit"])
        if kind == MODAL:
            problem = problem or validate_modal(data)
        if problem is not None:
            return problem
        interaction.responded = kind
        message: dict[str, Any] | None = None
        application_id = self.state.application_id
        metadata = {
            "interaction_metadata": {
                "id": interaction.payload["id"],
                "type": interaction.payload["type"],
                "user": _user_of(interaction),
                "authorizing_integration_owners": {},
            },
            "webhook_id": application_id,
            "application_id": application_id,
        }
        if kind == CHANNEL_MESSAGE:
            message = self.state.bot_message(interaction.channel_id, data, files, **metadata)
            interaction.original_message_id = message["id"]
            await self.journal.record(
                Record("message", "POST", call.path, data, files, message, time.monotonic())
            )
            await self.rest.publish(message)
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            message = self.state.bot_message(interaction.channel_id, {"flags": flags}, (), **metadata)
            interaction.original_message_id = message["id"]
        elif kind in (DEFERRED_UPDATE, UPDATE_MESSAGE) and "message" in interaction.payload:
            interaction.original_message_id = interaction.payload["message"]["id"]
            if kind == UPDATE_MESSAGE:
                target = self.state.messages[interaction.original_message_id]
                message = await self.rest.apply_edit(target, data, files, call.path, "POST")
        elif kind == MODAL:
            interaction.modal = data
        record_result = {"type": kind, "data": data, "message": message, "interaction": interaction.payload}
        await self.journal.record(
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
        return json_response(answer)

    async def _followup(self, call: Call) -> web.Response:
        application_id, token = call.args
        body, files = call.body, call.files
        interaction = self.state.interactions.get(token)
        if interaction is None or application_id != self.state.application_id:
            return error(404, 10015, "Unknown Webhook")
        if interaction.responded is None:
            return error(400, 40060, "Interaction has not been acknowledged.")
        problem = validate_message(body, files, interaction.payload["attachment_size_limit"])
        if problem is not None:
            return problem
        message = self.state.bot_message(
            interaction.channel_id,
            body,
            files,
            webhook_id=self.state.application_id,
            application_id=self.state.application_id,
        )
        interaction.followups.append(message["id"])
        await self.journal.record(
            Record("message", "POST", call.path, body, files, message, time.monotonic())
        )
        await self.rest.publish(message)
        return json_response(message)

    def _webhook_target(self, application_id: str, token: str, which: str) -> dict[str, Any] | None:
        interaction = self.state.interactions.get(token)
        if interaction is None or application_id != self.state.application_id:
            return None
        message_id = interaction.original_message_id if which == "@original" else which
        return self.state.messages.get(message_id or "")

    async def _get_webhook_message(self, call: Call) -> web.Response:
        application_id, token, which = call.args
        message = self._webhook_target(application_id, token, which)
        if message is None:
            return error(404, 10008, "Unknown Message")
        return json_response(message)

    async def _edit_webhook_message(self, call: Call) -> web.Response:
        application_id, token, which = call.args
        body, files = call.body, call.files
        message = self._webhook_target(application_id, token, which)
        if message is None:
            return error(404, 10008, "Unknown Message")
        limit = self.state.interactions[token].payload["attachment_size_limit"]
        problem = validate_message(body, files, limit)
        if problem is not None:
            return problem
        was_loading = bool(message["flags"] & LOADING)
        edited = await self.rest.apply_edit(message, body, files, call.path, "PATCH")
        if was_loading:
            # The "thinking" placeholder turning into the answer reads, for a user, as a new message.
            await self.journal.record(
                Record("message", "PATCH", call.path, body, files, edited, time.monotonic())
            )
        return json_response(edited)

    async def _delete_webhook_message(self, call: Call) -> web.Response:
        application_id, token, which = call.args
        message = self._webhook_target(application_id, token, which)
        if message is None:
            return error(404, 10008, "Unknown Message")
        del self.state.messages[message["id"]]
        await self.journal.record(Record("delete", "DELETE", call.path, None, (), message, time.monotonic()))
        return web.Response(status=204)


def _user_of(interaction: Interaction) -> dict[str, Any]:
    payload = interaction.payload
    return payload["member"]["user"] if "member" in payload else payload["user"]
