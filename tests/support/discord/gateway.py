"""The fake's gateway: the websocket over which the bot identifies and receives events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

from tests.support.discord.state import DiscordState
from tests.support.discord.wire import MESSAGE_CONTENT_INTENT

#: A heartbeat's ACK waits this long, as over a network (see ``GatewaySession._ack_later``).
HEARTBEAT_ACK_DELAY_S = 0.05


class Gateway:
    """The connected bots' sessions: identification (token, intents) and event dispatch."""

    def __init__(self, state: DiscordState, token: str, *, grant_message_content: bool) -> None:
        self.state = state
        self.token = token
        #: Whether the "developer portal" allows the privileged message content intent.
        self.grant_message_content = grant_message_content
        #: The intents the bot identified with (None before it did).
        self.identified_intents: int | None = None
        self.sessions: list[GatewaySession] = []
        self._connected = asyncio.Event()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # Discord's gateway compresses (zlib-stream) only when asked in the URL, never per message.
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=0, compress=False)
        await ws.prepare(request)
        session = GatewaySession(self, ws)
        self.sessions.append(session)
        try:
            await session.run()
        finally:
            self.sessions.remove(session)
            if not any(s.identified for s in self.sessions):
                self._connected.clear()
        return ws

    async def close(self) -> None:
        for session in list(self.sessions):
            await session.ws.close()

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        for session in list(self.sessions):
            if session.identified:
                await session.send_dispatch(event, data)

    async def wait_connected(self, within: float = 30.0) -> None:
        """Until a bot has identified and received its guild."""
        await asyncio.wait_for(self._connected.wait(), within)

    async def wait_disconnected(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while self.sessions:
            if time.monotonic() > deadline:
                raise TimeoutError("the bot is still connected to the gateway")
            await asyncio.sleep(0.05)

    async def on_identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & MESSAGE_CONTENT_INTENT and not self.grant_message_content:
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self.identified_intents = intents
        session.identified = True
        state = self.state
        session.session_id = f"session-{state.snowflake()}"
        ready = {
            "v": 10,
            "user": {**state.bot_user, "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": state.guild_id, "unavailable": True}],
            "session_id": session.session_id,
            "resume_gateway_url": state.gateway_url,
            "application": {"id": state.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "shard": [0, 1],
        }
        await session.send_dispatch("READY", ready)
        await session.send_dispatch("GUILD_CREATE", state.guild_payload())
        self._connected.set()


class GatewaySession:
    """One websocket connection from the bot: HELLO, heartbeats, IDENTIFY/RESUME, dispatches."""

    HEARTBEAT_INTERVAL_MS = 41_250

    def __init__(self, gateway: Gateway, ws: web.WebSocketResponse):
        self.gateway = gateway
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
                ack = asyncio.create_task(self._ack_later())
                self._acks.add(ack)  # a reference until it is done, so it is not collected early
                ack.add_done_callback(self._acks.discard)
            elif op == 2:
                await self.gateway.on_identify(self, data)
            elif op == 6:
                self.identified = True
                await self.send_dispatch("RESUMED", {})
            elif op == 8:
                state = self.gateway.state
                chunk = {
                    "guild_id": state.guild_id,
                    "members": state.guild_payload()["members"],
                    "chunk_index": 0,
                    "chunk_count": 1,
                    "nonce": (data or {}).get("nonce"),
                }
                await self.send_dispatch("GUILD_MEMBERS_CHUNK", chunk)
