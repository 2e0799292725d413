"""End to end with ``worker.backend: ray``: the real ``bot.py`` starts a local Ray and two replicas.

The same fake Discord and tiny models as tests/test_discord_e2e.py; only the backend differs. It
checks the path the unit tests of the Ray worker cannot: the engine loaded on the replicas, its
front handed to the bot, progress and results through Discord, a reply reusing the cached
inversion, and a clean SIGTERM that takes the replicas down with the bot.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.discord import FakeDiscord, buttons
from tests.support.discord.bot_process import BotProcess, is_result, write_bot_config
from tests.test_discord_e2e import World

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("discord-e2e-ray")
    fake = FakeDiscord()
    await fake.start()
    config = write_bot_config(
        tiny_config,
        folder / "bot.db",
        {
            "worker": {"backend": "ray", "ray": {"replicas": 2, "gpus_per_replica": 0}},
            "discord": {"progress_interval_s": 0.3, "command_guilds": [fake.guild_id]},
        },
    )
    # The bot's own Ray listens on 127.0.0.1 (its default without an address); no token file.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bot = BotProcess(fake, config, folder / "bot.log")
    await bot.start(within=240)
    world = World(fake, bot, 0, tiny_config, folder / "bot.db")
    try:
        yield world
    finally:
        if world.bot.running:
            await world.bot.kill()
        await fake.stop()


async def test_an_upload_gets_progress_then_a_result_from_a_replica(world: World) -> None:
    request = await world.ask("alice", "make it blue")
    status = await world.status_of(request)
    assert status["content"].startswith("📥")
    running = await world.fake.wait_for_message(
        lambda m: m["id"] == status["id"] and "%" in m["content"] and buttons(m).get("Cancel"),
        90,
        kinds=("edit",),
    )
    assert buttons(running)["Cancel"].startswith("otf:cancel:")
    result = await world.result_of(request)
    assert "“make it blue”" in result["content"]
    assert world.fake.attachment_bytes(result["attachments"][0]).startswith(b"\x89PNG")
    await world.final_status(status, "✅")
    world.results["first"] = result


async def test_a_reply_continues_the_result_and_sigterm_closes_cleanly(world: World) -> None:
    reply = await world.fake.send_message("bob", world.general, "add snow", reply_to=world.results["first"])
    assert is_result(await world.result_of(reply))
    assert await world.bot.stop() == 0
    assert "Traceback" not in world.bot.log_tail(400)
