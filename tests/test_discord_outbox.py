"""Nothing lost: the real bot (stand-in editor) against the fake Discord, killed where it used to lose work.

Each test runs ``tests/support/discord/stub_bot.py`` (the real discord.py, service, worker and
SQLite file around the stand-in editor, so it starts in seconds), breaks a download or a post
on the fake's side, SIGKILLs the bot at the moment the fake says the bot is stuck there, starts
it again and checks that the person is answered exactly once. The kills wait for what the fake
saw, never for a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from sessions.store import Store
from tests.support.discord import FakeDiscord
from tests.support.discord.bot_process import (
    STUB_BOT,
    BotProcess,
    is_attachment_reply,
    png_bytes,
    replies_to,
    status_final,
)
from tests.support.discord.journal import HANG, RESET

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WITHIN = 60.0
#: The bot's waits between tries of a result's post, short here.
POST_RETRIES = (0.05, 0.05, 0.05)


class Stage:
    """A fake Discord, a database, and the bot run (and re-run) on them."""

    def __init__(self, fake: FakeDiscord, folder: Path) -> None:
        self.fake = fake
        self.folder = folder
        self.database = folder / "bot.db"
        self.config = folder / "bot.yaml"
        self.configure()
        self.bot: BotProcess | None = None

    def configure(self, **discord: Any) -> None:
        """The bot's config: quick timeouts, no slash commands, unless ``discord`` says otherwise."""
        section = {"sync_commands": False, "download_timeout_s": 2, "progress_interval_s": 0.2, **discord}
        config = {"storage": {"database": str(self.database)}, "discord": section}
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")

    @property
    def general(self) -> str:
        return self.fake.channels["general"]["id"]

    async def start(self) -> None:
        self.bot = BotProcess(
            self.fake,
            self.config,
            self.folder / "bot.log",
            script=STUB_BOT,
            env={"STUB_POST_RETRY_S": ",".join(map(str, POST_RETRIES))},
        )
        await self.bot.start()

    async def kill(self) -> None:
        assert self.bot is not None
        await self.bot.kill()

    async def ask(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return await self.fake.send_message(
            "alice", self.general, text, files=[("photo.png", png_bytes())], mention_bot=True, **kwargs
        )

    async def status_of(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.fake.wait_for_message(replies_to(request["id"]), WITHIN)

    async def final(self, status: dict[str, Any], mark: str) -> dict[str, Any]:
        return await self.fake.wait_for_message(status_final(status["id"], mark), WITHIN, kinds=("edit",))

    def results_for(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        found = self.fake.records("message")
        return [
            r.result for r in found if r.result is not None and is_attachment_reply(request["id"])(r.result)
        ]

    async def settled(self) -> None:
        """Until the database says everything asked was delivered (the mark follows the final edit)."""
        for _ in range(1200):
            if self.undelivered() == (0, 0):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"still undelivered (jobs, uploads): {self.undelivered()}")

    def undelivered(self) -> tuple[int, int]:
        """(jobs not delivered, uploads pending) as the database says."""
        store = Store.open(self.database)
        try:
            return len(store.undelivered_jobs()) + len(store.unfinished_jobs()), len(store.uploads.all())
        finally:
            store.close()


@pytest_asyncio.fixture
async def stage(tmp_path: Path) -> AsyncIterator[Stage]:
    fake = FakeDiscord()
    await fake.start()
    staged = Stage(fake, tmp_path)
    try:
        yield staged
    finally:
        if staged.bot is not None and staged.bot.running:
            await staged.bot.kill()
        await fake.stop()


def posting_a_file(body: Any, files: tuple[Any, ...]) -> bool:
    return bool(files)


def finishing(body: Any, files: tuple[Any, ...]) -> bool:
    return str((body or {}).get("content", "")).startswith("✅")


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        # aiohttp tries a reset request once more on a fresh connection: both are reset.
        (("reset", "reset"), "the connection was reset"),
        (("refuse",), "the connection was refused"),
        (("hang",), "it didn't arrive within 2 seconds"),
    ],
    ids=["reset", "refused", "hanging"],
)
async def test_a_broken_download_is_answered_with_what_happened(
    stage: Stage, faults: tuple[str, ...], said: str
) -> None:
    await stage.start()
    request = await stage.ask("make it blue", download_faults=faults)
    status = await stage.status_of(request)
    failed = await stage.final(status, "⚠️")
    assert f"I couldn't download your image: {said}. Please post it again." in failed["content"]
    assert failed["components"] == []
    # The bot keeps serving, and nothing is left half-done.
    again = await stage.ask("again")
    await stage.final(await stage.status_of(again), "✅")
    assert len(stage.results_for(again)) == 1
    await stage.settled()


async def test_a_kill_during_the_download_fetches_it_again_at_start(stage: Stage) -> None:
    await stage.start()
    request = await stage.ask("make it blue", download_faults=("hang",))
    status = await stage.status_of(request)
    await stage.fake.wait_for(lambda r: r.kind == "download", WITHIN)
    await stage.kill()  # the request was "received" and the image on its way
    assert stage.undelivered() == (0, 1)

    await stage.start()
    result = await stage.fake.wait_for_message(is_attachment_reply(request["id"]), WITHIN)
    assert "“make it blue”" in result["content"]
    await stage.final(status, "✅")  # the same status message, finished
    await stage.settled()


async def test_a_kill_while_the_result_upload_is_retried_posts_it_at_start(stage: Stage) -> None:
    """Done in the database, never posted: the next start posts it (once) and finishes the status."""
    stage.fake.fail_next("POST", r"/channels/\d+/messages$", status=500, times=100, when=posting_a_file)
    await stage.start()
    request = await stage.ask("make it blue")
    status = await stage.status_of(request)
    await stage.fake.wait_for(lambda r: r.kind == "failed", WITHIN)  # discord.py now retries in a while
    await stage.kill()
    assert stage.undelivered() == (1, 0)

    stage.fake.clear_failures()
    await stage.start()
    await stage.final(status, "✅")
    assert len(stage.results_for(request)) == 1
    await stage.settled()


@pytest.mark.parametrize("fault", [503, RESET], ids=["server-error", "reset"])
async def test_a_result_discord_keeps_failing_to_take_is_kept_and_posted_at_start(
    stage: Stage, fault: int
) -> None:
    """Tried again a few times, then the person is told it is kept; the next start posts it."""
    stage.fake.fail_next("POST", r"/channels/\d+/messages$", status=fault, times=100, when=posting_a_file)
    await stage.start()
    request = await stage.ask("make it blue")
    status = await stage.status_of(request)
    kept = await stage.final(status, "⚠️")
    assert "I couldn't post your result because Discord isn't answering" in kept["content"]
    tries = [r for r in stage.fake.records("failed") if r.files]
    assert len(tries) >= 1 + len(POST_RETRIES)
    assert stage.results_for(request) == []
    assert stage.undelivered() == (1, 0)
    await stage.kill()

    stage.fake.clear_failures()
    await stage.start()
    await stage.final(status, "✅")
    assert len(stage.results_for(request)) == 1
    await stage.settled()


async def test_a_result_posted_but_not_finished_is_finished_at_start_not_posted_again(stage: Stage) -> None:
    stage.fake.fail_next("PATCH", r"/channels/\d+/messages/\d+$", status=HANG, when=finishing)
    await stage.start()
    request = await stage.ask("make it blue")
    status = await stage.status_of(request)
    await stage.fake.wait_for(lambda r: r.kind == "failed" and r.method == "PATCH", WITHIN)
    assert len(stage.results_for(request)) == 1
    await stage.kill()  # the result is out, its status still says "editing"

    stage.fake.clear_failures()
    await stage.start()
    await stage.final(status, "✅")
    await stage.settled()
    assert len(stage.results_for(request)) == 1


async def test_a_kill_before_a_result_in_a_thread_finishes_the_status_in_its_channel_at_start(
    stage: Stage,
) -> None:
    """/edit with open_threads: the result goes to the new thread, the status stays in the channel."""
    stage.configure(open_threads=True, sync_commands=True, command_guilds=[stage.fake.guild_id])
    stage.fake.fail_next("POST", r"/channels/\d+/messages$", status=HANG, when=posting_a_file)
    await stage.start()
    asked = await stage.fake.slash_command(
        "alice",
        stage.general,
        "edit",
        {"instruction": "make it blue"},
        files={"image": ("a.png", png_bytes())},
    )
    status = await stage.fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == asked["id"], WITHIN
    )
    thread = await stage.fake.wait_for(lambda r: r.kind == "thread", WITHIN)
    await stage.fake.wait_for(lambda r: r.kind == "failed" and bool(r.files), WITHIN)
    await stage.kill()  # the result on its way to the thread, the status "editing" in the channel
    assert stage.undelivered() == (1, 0)

    stage.fake.clear_failures()
    await stage.start()
    done = await stage.final(status, "✅")
    assert done["channel_id"] == stage.general
    result = await stage.fake.wait_for_message(lambda m: bool(m["attachments"]), WITHIN)
    assert result["channel_id"] == thread.result["id"]
    await stage.settled()
