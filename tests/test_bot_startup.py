"""Starting ``bot.py`` as an admin would: what it says, and every way it refuses to start in one line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.discord import FakeDiscord
from tests.support.discord.bot_process import (
    LAUNCHER,
    ROOT,
    BotProcess,
    free_port,
    is_attachment_reply,
    png_bytes,
    write_bot_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _environment(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    return environment | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_environment(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )


async def _run_beside(*args: str, **env: str) -> tuple[int, str]:
    """``_run`` for a bot whose Discord is served by this test's event loop: the loop keeps running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=_environment(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 200)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def _logged(bot: BotProcess, text: str, within: float = 60.0) -> str:
    """The bot's log once ``text`` is in it."""
    async with asyncio.timeout(within):
        while True:
            log = bot.log_text()
            if text in log:
                return log
            await asyncio.sleep(0.2)


def _one_error_line(stderr: str) -> str:
    """The single ERROR line of a refused start (and no traceback)."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "[ERROR" in line]
    assert len(errors) == 1, stderr
    return errors[0]


def test_no_token_and_no_terminal_refuses_instead_of_a_silent_console(tiny_config: Path) -> None:
    done = _run("bot.py", "--config", str(tiny_config))
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert "DISCORD_TOKEN is not set and there is no terminal to chat in" in line
    assert "--console" in line
    assert "loading the models" not in done.stderr  # refused before minutes of loading


def test_an_unreachable_discord_is_one_line_and_exit_1(tiny_config: Path, tmp_path: Path) -> None:
    config = write_bot_config(tiny_config, tmp_path / "bot.db", {})
    closed = f"http://127.0.0.1:{free_port()}"
    done = _run(str(LAUNCHER), closed, "--", "--config", str(config), DISCORD_TOKEN="some-token")
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "Cannot start the Discord bot: Discord cannot be reached (ClientConnectorError" in line
    assert "some-token" not in done.stderr


async def test_a_refused_token_is_one_line_and_exit_1(tiny_config: Path, tmp_path: Path) -> None:
    fake = FakeDiscord(token="the-right-token")
    await fake.start()
    try:
        config = write_bot_config(tiny_config, tmp_path / "bot.db", {})
        code, stderr = await _run_beside(
            str(LAUNCHER), fake.base_url, "--", "--config", str(config), DISCORD_TOKEN="a-wrong-token"
        )
    finally:
        await fake.stop()
    assert code == 1
    line = _one_error_line(stderr)
    assert "Discord refused the token in DISCORD_TOKEN" in line
    assert "a-wrong-token" not in stderr


async def test_a_refused_command_sync_is_logged_and_the_bot_serves_anyway(
    tiny_config: Path, tmp_path: Path
) -> None:
    """At the default log level the start-up says what it did, and each request and result is a line."""
    fake = FakeDiscord()
    await fake.start()
    fake.fail_next("PUT", r"/commands$", status=403, times=10)
    config = write_bot_config(tiny_config, tmp_path / "bot.db", {})
    bot = BotProcess(fake, config, tmp_path / "bot.log", verbose=False)
    try:
        await bot.start()
        request = await fake.send_message(
            "alice",
            fake.channels["general"]["id"],
            "add a hat",
            files=[("p.png", png_bytes())],
            mention_bot=True,
        )
        await fake.wait_for_message(is_attachment_reply(request["id"]), 90)
        log = await _logged(bot, "invite link:")  # on_ready comes when the guilds have streamed in
        assert "slash commands were not registered: Discord answered 403" in log
        assert "applications.commands scope" in log
        for said in (
            "models loaded in",
            "on cpu (float32); no GPU",
            "message content intent: on",
            "connected to Discord as",
            "invite link: https://discord.com/oauth2/authorize?client_id=",
            "scope=bot+applications.commands",
        ):
            assert said in log, said
        assert "requested (start) by" in log
        assert " done: version " in log
        assert "add a hat" not in log  # ids, never what people wrote
        assert "voice will NOT be supported" not in log
    finally:
        await bot.stop()
        await fake.stop()
