"""A fake Discord (REST v10 + gateway) on 127.0.0.1, good enough for an unmodified discord.py bot.

Tests run the real client against it: the bot logs in, receives a guild over the gateway,
gets messages and interactions injected by the test, and everything it sends is recorded
(with uploaded file bytes) and can be awaited. Errors can be injected per route to test how
the bot copes with Discord failing. Only the parts of Discord the bot uses are modelled,
but those follow Discord's documented behaviour (snowflakes as strings, the message content
intent, interaction acknowledgement rules, upload limits, content length limits).

The parts: ``state`` (the guild and its messages), ``gateway``, ``rest`` and ``interactions``
(what the bot calls), ``people`` (what the test makes users do), ``journal`` (what the bot did).
"""

from __future__ import annotations

import mimetypes
import re
import socket
import struct
import time

from aiohttp import web

from tests.support.discord.gateway import Gateway
from tests.support.discord.interactions import InteractionApi
from tests.support.discord.journal import HANG, RESET, Journal
from tests.support.discord.people import People
from tests.support.discord.rest import RestApi
from tests.support.discord.state import DiscordState
from tests.support.discord.wire import API_PREFIX, Call, Record, error, read_body


class FakeDiscord(DiscordState):
    """The fake server. ``await start()``, point discord.py at ``api_base``/``gateway_url``."""

    def __init__(
        self, token: str = "fake-token", *, premium_tier: int = 0, grant_message_content: bool = True
    ) -> None:
        super().__init__(premium_tier=premium_tier)
        self.token = token
        self.port = 0
        self.journal = Journal()
        self.gateway = Gateway(self, token, grant_message_content=grant_message_content)
        self.people = People(self, self.gateway)
        rest = RestApi(self, self.journal, self.gateway)
        self._routes = rest.routes() + InteractionApi(rest).routes()
        self._runner: web.AppRunner | None = None

        # What the bot did, and failures to inject into its next calls.
        self.log = self.journal.log
        self.wait_for = self.journal.wait_for
        self.wait_for_message = self.journal.wait_for_message
        self.records = self.journal.records
        self.fail_next = self.journal.fail_next
        self.clear_failures = self.journal.clear_failures
        # The bot's connection, and events sent to it.
        self.wait_connected = self.gateway.wait_connected
        self.wait_disconnected = self.gateway.wait_disconnected
        self.dispatch = self.gateway.dispatch
        # What the people of the guild do.
        self.send_message = self.people.send_message
        self.create_thread = self.people.create_thread
        self.command = self.people.command
        self.slash_command = self.people.slash_command
        self.message_command = self.people.message_command
        self.modal_inputs = self.people.modal_inputs
        self.submit_modal = self.people.submit_modal
        self.click = self.people.click

    async def start(self) -> None:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_get("/gw", self.gateway.handle)
        app.router.add_get("/gw/", self.gateway.handle)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self._serve_attachment)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.journal.release_hanging()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve_attachment(self, request: web.Request) -> web.StreamResponse:
        attachment_id = request.match_info["attachment_id"]
        await self.journal.record(
            Record("download", "GET", request.path, None, (), {"id": attachment_id}, time.monotonic())
        )
        faults = self.download_faults.get(attachment_id)
        if faults:
            fault = faults.pop(0)
            if fault == "hang":
                await self.journal.hang()
            elif fault == "reset":
                _reset(request)
                return web.Response(status=500)  # never reaches the bot: the connection is gone
        data = self.attachments.get(attachment_id)
        if data is None:
            return web.Response(status=404, text="Not found")
        content_type = mimetypes.guess_type(request.match_info["filename"])[0] or "application/octet-stream"
        return web.Response(body=data, content_type=content_type)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        method = request.method
        is_webhook = path.startswith(("/webhooks/", "/interactions/"))
        if not is_webhook and request.headers.get("Authorization") != f"Bot {self.token}":
            return error(401, 0, "401: Unauthorized")
        body, files = await read_body(request)
        failure = self.journal.failure_for(method, path, body, files)
        if failure is not None:
            await self.journal.record(
                Record("failed", method, path, body, files, {"status": failure.status}, time.monotonic())
            )
            if failure.status == HANG:
                await self.journal.hang()
                return web.Response(status=503)  # the fake is stopping: nobody waits for this
            if failure.status == RESET:
                _reset(request)
                return web.Response(status=500)  # never reaches the bot: the connection is gone
            return failure
        for pattern, route_method, handler in self._routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return await handler(Call(method, request.path, request.query, body, files, match.groups()))
        await self.journal.record(Record("unhandled", method, path, body, files, None, time.monotonic()))
        return error(404, 0, f"404: Not Found ({method} {path})")


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP reset, as a failing CDN or proxy does."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
