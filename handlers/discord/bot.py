"""The Discord bot: a ``commands.Bot`` whose set-up wires buttons, cogs, commands and the service.

``run_discord`` is what the composition root calls. It owns the service's life on this
event loop: the service starts in ``setup_hook`` (after login, so jobs recovered from a
crash can report at once) and stops when the bot closes, before the HTTP session does, so
every waiting requester is told that their edit will run after the restart.

Start-up talks at INFO: the intent mode, the commands registered (or why not: a refused sync
is logged and the bot serves anyway, since mentions, replies and DMs need no commands), who it
is connected as and the invite link. A start that cannot succeed (no Discord, a bad token, the
intent refused) is one line and exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from handlers.discord.cogs import EditCommands, MessageEvents
from handlers.discord.errors import report
from handlers.discord.flows import Relay
from handlers.discord.moderation import SafetyChecker
from handlers.discord.ops import OpsServer
from handlers.discord.preferences import Preferences
from handlers.discord.views import CancelButton, PickButton, ResultButton
from sessions import AppConfig, DiscordConfig, EditService, OpsConfig

log = logging.getLogger(__name__)

#: View Channels, Send Messages (and in Threads), Create Public Threads, Embed Links, Attach Files,
#: Read Message History: what the bot uses, as README lists them.
INVITE_PERMISSIONS = discord.Permissions(309237763072)


class StartupFailed(Exception):
    """Something the bot needs at start-up cannot be had; the message says what and what to do."""


class _NoVoiceNotice(logging.Filter):
    """discord.py warns at every start that voice support is missing: this bot never speaks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


class EditBot(commands.Bot):
    def __init__(self, service: EditService, config: DiscordConfig, ops: OpsConfig) -> None:
        intents = discord.Intents.default()
        intents.message_content = config.message_content
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
        )
        self.service = service
        self.config = config
        self._greeted = False
        safety = SafetyChecker(config.safety_model) if config.safety_model else None
        self.preferences = Preferences(service, config, safety_available=safety is not None)
        #: What the cogs, the buttons and the modal hand their events to (``views.RelayingClient``).
        self.relay = Relay(self, service, config=config, preferences=self.preferences, safety=safety)
        self.ops = (
            OpsServer(ops, service.stats, self._gateway_status, service.metrics) if ops.enabled else None
        )
        self._service_started = False
        self._closing = False

    def _gateway_status(self) -> tuple[bool, float | None]:
        connected = self.is_ready() and not self.is_closed()
        latency = self.latency if connected and math.isfinite(self.latency) else None
        return connected, latency

    async def setup_hook(self) -> None:
        if self.config.message_content:
            log.info(
                "message content intent: on (enable it in the developer portal too); "
                "replies, edit channels and mentions are read"
            )
        else:
            log.info(
                "message content intent: off; only mentions, DMs, slash commands and the "
                "'Edit image' menu reach the bot (edit channels need a mention)"
            )
        self.add_dynamic_items(ResultButton, CancelButton, PickButton)
        await self.add_cog(MessageEvents(self.relay))
        await self.add_cog(
            EditCommands(self, self.relay, self.service, self.preferences, self.config.message_content)
        )
        self.tree.error(self._on_app_command_error)
        if self.config.sync_commands:
            await self._sync_commands()
        else:
            log.info("slash commands not registered at start-up (discord.sync_commands: false)")
        self.service.add_listener(self.relay.recovered)
        await self.service.start()
        self._service_started = True
        await self.relay.resume_uploads()
        if self.ops is not None:
            try:
                await self.ops.start()
            except OSError as error:
                raise StartupFailed(
                    f"the ops endpoint cannot listen on {self.ops.address}: {error.strerror or error}; "
                    "change ops.port or stop what uses it"
                ) from error

    async def _sync_commands(self) -> None:
        """Register the slash commands; a refusal is logged and the bot serves without them."""
        try:
            await self._register_commands()
        except discord.HTTPException as error:
            hint = (
                " (was the bot invited with the applications.commands scope? see the invite link below)"
                if error.status == 403
                else ""
            )
            log.warning(
                "slash commands were not registered: Discord answered %s %s%s; the bot serves mentions, "
                "replies and DMs anyway, and tries again at the next start",
                error.status,
                error.text or type(error).__name__,
                hint,
            )

    async def _register_commands(self) -> None:
        if not self.config.command_guilds:
            synced = await self.tree.sync()
            log.info(
                "registered %d application commands globally (may take up to an hour to show)", len(synced)
            )
            return
        for guild_id in self.config.command_guilds:
            guild = discord.Object(id=int(guild_id))
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("registered %d application commands in server %s", len(synced), guild_id)

    async def _on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await report(interaction, error)

    async def on_message(self, message: discord.Message) -> None:
        """Text commands are not used: the ``MessageEvents`` cog reads messages."""

    async def on_ready(self) -> None:
        """Say who we are once; a reconnect's READY is discord.py's to log."""
        assert self.user is not None
        if self._greeted:
            return
        self._greeted = True
        log.info("connected to Discord as %s (%s) in %d servers", self.user, self.user.id, len(self.guilds))
        log.info(
            "invite link: %s",
            discord.utils.oauth_url(
                self.application_id or self.user.id,
                permissions=INVITE_PERMISSIONS,
                scopes=("bot", "applications.commands"),
            ),
        )

    async def close(self) -> None:
        """Stop taking work, tell waiting requesters (the stopped service postpones their jobs), close."""
        if self._closing:
            return
        self._closing = True
        if self.ops is not None:
            await self.ops.stop()
        if self._service_started:
            await self.service.stop()
        await self.relay.close()
        await super().close()


async def run_discord(config: AppConfig, service: EditService, token: str) -> int:
    """Run the bot until it is closed (SIGINT/SIGTERM close it cleanly); the exit code.

    It reads the ``discord`` and ``ops`` sections of ``config``; the service must not be
    started yet: the bot starts and stops it. When the bot cannot start (Discord unreachable,
    the token or the privileged intent refused) it logs one line saying why and returns 1.
    """
    logging.getLogger("discord.client").addFilter(_NoVoiceNotice())
    bot = EditBot(service, config.discord, config.ops)
    async with bot:
        running = asyncio.create_task(bot.start(token), name="discord-bot")
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(
                    signal_number, lambda: asyncio.ensure_future(_shut_down(bot, running))
                )
        try:
            await running
        except asyncio.CancelledError:
            if not bot.is_closed():
                raise
        except BaseException as error:
            why = _why_not_started(error)
            if why is None:
                raise
            log.error("Cannot start the Discord bot: %s", why)
            return 1
    return 0


def _why_not_started(error: BaseException) -> str | None:
    """One line for the ways a start fails that the admin can fix; None for a bug (a traceback)."""
    if isinstance(error, StartupFailed):
        return str(error)
    if isinstance(error, discord.LoginFailure):
        return (
            "Discord refused the token in DISCORD_TOKEN; copy it again from the developer portal "
            "(Bot → Reset Token)."
        )
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return (
            "Discord refused the message content intent. Enable it for the bot in the developer portal "
            "(Bot → Privileged Gateway Intents), or set `discord.message_content: false` in config.yaml."
        )
    if isinstance(error, discord.HTTPException):
        return (
            f"Discord answered {error.status} {error.text or type(error).__name__} at login; try again later."
        )
    if isinstance(error, aiohttp.ClientError | OSError | discord.GatewayNotFound | TimeoutError):
        return (
            f"Discord cannot be reached ({type(error).__name__}: {error}); check the network, DNS "
            "and any proxy, then start again."
        )
    return None


async def _shut_down(bot: EditBot, running: asyncio.Task[None]) -> None:
    """Close the bot, then stop waiting for it: during an outage discord.py may be sleeping in a
    reconnect back-off of several minutes, which closing does not interrupt."""
    await bot.close()
    running.cancel()
