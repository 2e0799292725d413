"""The people of the fake guild, as the tests drive them: they post, open threads and interact."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tests.support.discord.gateway import Gateway
from tests.support.discord.state import DiscordState, Interaction
from tests.support.discord.wire import APPLICATION_COMMAND, MESSAGE_COMPONENT, MODAL_SUBMIT

#: How long a simulated user takes to fill in a modal.
TYPING_S = 0.5


class People:
    """Each action stores what Discord would store, then sends the bot the event it would get."""

    def __init__(self, state: DiscordState, gateway: Gateway) -> None:
        self.state = state
        self.gateway = gateway

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
        download_faults: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A user posts a message: stored, then sent to the bot as MESSAGE_CREATE.

        ``download_faults`` is what the bot's downloads of its attachments run into, in order:
        "hang", "reset", or "refuse" (every download: the link points at a closed port).
        """
        state = self.state
        user = state.users[author]
        mentions = []
        if mention_bot:
            content = f"<@{state.bot_user['id']}> {content}".strip()
            mentions.append(state.bot_user)
        if (
            reply_to is not None
            and reply_ping
            and reply_to["author"]["id"] not in {m["id"] for m in mentions}
        ):
            mentions.append(reply_to["author"])
        attachments = [state.add_attachment(name, data) for name, data in files or []]
        for attachment in attachments:
            if "refuse" in download_faults:
                closed = f"http://127.0.0.1:{_closed_port()}/attachments/{attachment['id']}/x.png"
                attachment["url"] = attachment["proxy_url"] = closed
            state.download_faults[attachment["id"]] = [f for f in download_faults if f != "refuse"]
        message = state.message_payload(
            channel_id=channel_id,
            author=user,
            content=content,
            attachments=attachments,
            mentions=mentions,
            reference=reply_to,
        )
        if "guild_id" in message:
            message["member"] = {k: v for k, v in state.member(user).items() if k != "user"}
        state.messages[message["id"]] = message
        seen = state.as_seen_by_bot(message, self.gateway.identified_intents)
        await self.gateway.dispatch("MESSAGE_CREATE", seen)
        return message

    async def create_thread(self, author: str, channel_id: str, name: str) -> dict[str, Any]:
        """A user opens a public thread (without a starter message) in a text channel."""
        state = self.state
        thread = state.thread_payload(state.snowflake(), channel_id, state.users[author]["id"], name, 1440)
        state.guild_channels[thread["id"]] = thread
        await self.gateway.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    def command(self, name: str, kind: int = 1) -> dict[str, Any]:
        for command in self.state.commands.values():
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
            attachment = self.state.add_attachment(filename, data_bytes)
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
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
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
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return payload

    def modal_inputs(self, opened_by: dict[str, Any]) -> list[str]:
        """The custom ids of the text inputs of the modal the bot opened for ``opened_by``."""
        modal = self.state.interactions[opened_by["token"]].modal
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
        modal = self.state.interactions[opened_by["token"]].modal
        assert modal is not None, "the bot did not answer that interaction with a modal"
        await asyncio.sleep(TYPING_S)
        rows = []
        for custom_id, value in values.items():
            rows.append({"type": 1, "components": [{"type": 4, "custom_id": custom_id, "value": value}]})
        data = {"custom_id": modal["custom_id"], "components": rows}
        channel_id = opened_by["channel_id"]
        payload = self._interaction(MODAL_SUBMIT, user, channel_id, data)
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def click(
        self, user: str, message: dict[str, Any], custom_id: str, *, forged_in: str | None = None
    ) -> dict[str, Any]:
        """Click the button ``custom_id`` on a bot message (the current stored version of it).

        ``forged_in`` sends the click as if made in that channel: an event real Discord would
        not deliver, as a hostile client or a bug elsewhere might.
        """
        current = self.state.messages.get(message["id"], message)
        ids = [c.get("custom_id") for row in current.get("components", []) for c in row.get("components", [])]
        assert custom_id in ids, f"no button {custom_id!r} on message {message['id']}; buttons: {ids}"
        data = {"custom_id": custom_id, "component_type": 2}
        channel_id = forged_in or current["channel_id"]
        payload = self._interaction(MESSAGE_COMPONENT, user, channel_id, data, message=current)
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return payload

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
        state = self.state
        user_data = state.users[user]
        channel = state.channel(channel_id)
        assert channel is not None, f"unknown channel {channel_id}"
        in_guild = state.is_guild_channel(channel_id)
        payload: dict[str, Any] = {
            "id": state.snowflake(),
            "type": kind,
            "token": f"tok-{state.snowflake()}",
            "version": 1,
            "application_id": state.application_id,
            "data": data,
            "channel_id": channel_id,
            "channel": channel,
            "locale": "en-US",
            "app_permissions": str(state.permissions_of(state.bot_user["id"])),
            "attachment_size_limit": attachment_size_limit or state.upload_limit,
            "entitlements": [],
            "authorizing_integration_owners": {"0": state.guild_id},
            "context": 0 if in_guild else 1,
        }
        if in_guild:
            payload["guild_id"] = state.guild_id
            payload["guild"] = {"id": state.guild_id, "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            payload["member"] = state.member(user_data, with_permissions=True)
        else:
            payload["user"] = user_data
        if message is not None:
            payload["message"] = message
        state.interactions[payload["token"]] = Interaction(payload, channel_id)
        return payload


def _closed_port() -> int:
    """A port nothing listens on (bound a moment ago, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
