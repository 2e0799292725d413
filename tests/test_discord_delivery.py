"""Delivering what a restart left: the real service and SQLite, Discord's channel recorded at the edge."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest_asyncio
from PIL import Image

from handlers.discord.delivery import Delivery, Destination
from handlers.discord.links import Links
from handlers.discord.moderation import SafetyChecker
from handlers.discord.preferences import Preferences, channel_place
from sessions import Author, DiscordConfig, EditService, Ticket
from sessions.store import Store
from tests.support.editor import StandInEditor, stand_in_app

PLACE = channel_place(1, 3)
BOB = Author("5", "Bob")


class Channel:
    """The channel the results go to: records what is posted there."""

    def __init__(self) -> None:
        self.posted: list[str] = []

    async def send(self, content: str, **kwargs: Any) -> Any:
        self.posted.append(content)
        return SimpleNamespace(id=600_000_000_000_000_000 + len(self.posted))


class Status:
    """A status message that records its edits; ``reachable=False``: Discord fails to take them."""

    def __init__(self, *, reachable: bool = True) -> None:
        self.message_id = 1
        self.channel_id = 3
        self.reachable = reachable
        self.edits: list[str] = []

    async def edit(
        self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
    ) -> None:
        if not self.reachable:
            raise ConnectionResetError("Discord is not answering")
        self.edits.append(content)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[EditService]:
    app = stand_in_app(tmp_path / "bot.db", StandInEditor())
    await app.service.start()
    try:
        yield app.service
    finally:
        await app.service.stop()
        app.close()


def a_start(service: EditService, channel: Channel, *, safety: SafetyChecker | None = None) -> Delivery:
    """The bot's delivery as a (re)start builds it, its results going to ``channel``."""
    bot: Any = SimpleNamespace(
        get_guild=lambda guild_id: None, get_partial_messageable=lambda *a, **k: channel
    )
    preferences = Preferences(service, DiscordConfig(safety_check=safety is not None), safety is not None)
    return Delivery(
        bot, service, Links(bot, service), preferences=preferences, safety=safety, progress_interval_s=0.0
    )


async def test_a_result_posted_before_a_restart_is_neither_checked_nor_posted_again(
    service: EditService, tmp_path: Path
) -> None:
    """A safety checker failing at restart used to turn a result already shown into "withheld"."""
    destination = Destination(3, 1, None, 1)
    ticket = await service.start_edit(
        PLACE, BOB, png(), "make it red", reply_context=destination.to_context()
    )
    made = await ticket.result()
    await service.link_message("discord", 555, made.id)  # posted, then the bot died before finishing
    channel, status = Channel(), Status()
    restarted = a_start(service, channel, safety=SafetyChecker(str(tmp_path / "no-such-checker")))
    await restarted.follow(ticket, status, destination)
    assert status.edits[-1].startswith("✅")
    assert channel.posted == []
    assert service.get_job(ticket.job.id).delivered_at is not None
    await restarted.close()


async def test_a_grid_posted_before_a_restart_is_not_posted_again(service: EditService) -> None:
    destination = Destination(3, 1, None, 1)
    first = await (await service.start_edit(PLACE, BOB, png(), "make it red")).result()
    ticket: Ticket[Any] = await service.variations(
        first.id, BOB, place=PLACE, reply_context=destination.to_context()
    )
    channel = Channel()
    before = a_start(service, channel)
    await before.follow(ticket, Status(reachable=False), destination)  # the grid out, the status not
    await before.close()
    assert len(channel.posted) == 1
    assert service.get_job(ticket.job.id).delivered_at is None

    status = Status()
    restarted = a_start(service, channel)
    await restarted.follow(ticket, status, destination)
    assert status.edits[-1].startswith("✅")
    assert len(channel.posted) == 1
    assert service.get_job(ticket.job.id).delivered_at is not None
    await restarted.close()


async def test_a_job_of_ours_that_cannot_say_where_to_report_is_given_up_once(tmp_path: Path) -> None:
    """Else it comes back at every start; another transport's job is left to that transport."""
    contexts = [
        {"transport": "discord"},
        {"transport": "discord", "channel_id": "#general"},
        {"console": "s1"},
    ]
    app = stand_in_app(tmp_path / "bot.db", StandInEditor())
    await app.service.start()
    for context in contexts:
        await (await app.service.start_edit(PLACE, BOB, png(), "make it red", reply_context=context)).result()
    await app.service.stop()
    app.close()

    again = stand_in_app(tmp_path / "bot.db", StandInEditor())
    restarted = a_start(again.service, Channel())

    async def recovered(ticket: Ticket[Any]) -> None:
        restarted.recovered(ticket)

    again.service.add_listener(recovered)
    await again.service.start()
    await restarted.close()
    await again.service.stop()
    again.close()
    store = Store.open(tmp_path / "bot.db")
    try:
        assert [job.reply_context for job in store.undelivered_jobs()] == [{"console": "s1"}]
    finally:
        store.close()
