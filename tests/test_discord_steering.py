"""End to end: steering an edit in the real ``bot.py`` (tiny models) against the fake Discord.

Fix captions (button -> modal -> result), variations (grid -> pick), previews on the status
message, Delete, requester-only buttons. The fake checks
Discord's limits on what the bot sends (content, components, modals, upload size).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from tests.support.discord import EPHEMERAL, FakeDiscord, Record, buttons
from tests.support.discord.bot_process import (
    BotProcess,
    is_attachment_reply,
    png_bytes,
    replies_to,
    write_bot_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

RESULT_TIMEOUT = 90.0


class World:
    def __init__(self, fake: FakeDiscord, bot: BotProcess) -> None:
        self.fake = fake
        self.bot = bot
        self.results: dict[str, dict[str, Any]] = {}

    @property
    def general(self) -> str:
        return self.fake.channels["general"]["id"]

    async def edit(self, user: str, text: str, channel: str | None = None) -> dict[str, Any]:
        """Post an image with an instruction and wait for the result."""
        request = await self.fake.send_message(
            user, channel or self.general, text, files=[("photo.png", png_bytes())], mention_bot=True
        )
        return await self.reply_to(request)

    async def reply_to(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.fake.wait_for_message(is_attachment_reply(message["id"]), RESULT_TIMEOUT)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\nThe bot's log:\n{self.bot.log_tail()}") from None

    async def answer_to(self, interaction: dict[str, Any], within: float = 15) -> dict[str, Any]:
        """The message that answers an interaction (its status message, or an ephemeral reply)."""
        return await self.fake.wait_for_message(
            lambda m: (m.get("interaction_metadata") or {}).get("id") == interaction["id"], within
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("discord-steering")
    fake = FakeDiscord()
    await fake.start()
    config = write_bot_config(
        tiny_config,
        folder / "bot.db",
        {
            "engine": {"preview_interval_s": 0.0},
            "worker": {"max_queue": 10, "per_user_cap": 3},
            "discord": {"progress_interval_s": 0.3, "command_guilds": [fake.guild_id]},
        },
    )
    bot = BotProcess(fake, config, folder / "bot.log")
    await bot.start()
    try:
        yield World(fake, bot)
    finally:
        if bot.running:
            await bot.kill()
        await fake.stop()


async def opened_modal(fake: FakeDiscord, opened_by: dict[str, Any]) -> dict[str, str]:
    """The text inputs (custom id -> prefilled value) of the modal opened in answer to ``opened_by``."""
    await fake.wait_for(
        lambda r: (
            r.kind == "callback" and r.result is not None and r.result["interaction"]["id"] == opened_by["id"]
        ),
        15,
    )
    modal = fake.interactions[opened_by["token"]].modal
    assert modal is not None, "the bot did not answer with a modal"
    return {
        field["custom_id"]: field.get("value", "")
        for row in modal["components"]
        for field in row["components"]
    }


async def test_fix_captions_opens_a_prefilled_modal_and_redoes_the_edit(world: World) -> None:
    fake = world.fake
    result = await world.edit("alice", "make it blue")
    world.results["first"] = result
    assert {"Fix captions", "Delete", "Retry"} <= set(buttons(result))
    with Image.open(io.BytesIO(fake.attachment_bytes(result["attachments"][0]))) as posted:
        assert posted.text["Instruction"] == "make it blue"  # the provenance survives the upload
    understood = result["content"].split("understood as: ")[1].split(" → ")[0].replace("\\", "")

    click = await fake.click("alice", result, buttons(result)["Fix captions"])
    values = await opened_modal(fake, click)
    before_id, after_id = values
    assert values[before_id].splitlines()[0] == understood

    same = await fake.submit_modal("alice", click, {before_id: "a photo", after_id: "a photo\n"})
    refusal = await world.answer_to(same)
    assert refusal["flags"] & EPHEMERAL
    assert "the same" in refusal["content"]

    click = await fake.click("bob", result, buttons(result)["Fix captions"])
    before_id, after_id = await opened_modal(fake, click)
    wordy = await fake.submit_modal(
        "bob", click, {before_id: "a photo", after_id: "a " + "very " * 80 + "blue photo"}
    )
    refusal = await world.answer_to(wordy)
    assert "too long: the text encoder (CLIP) reads at most 75 tokens" in refusal["content"]

    click = await fake.click("bob", result, buttons(result)["Fix captions"])
    before_id, after_id = await opened_modal(fake, click)
    fixed = await fake.submit_modal("bob", click, {before_id: "a red photo", after_id: "a blue photo\n\n"})
    status = await world.answer_to(fixed)
    assert status["content"].startswith("📥")
    redone = await world.reply_to(status)
    assert "captions written by a person: a red photo → a blue photo" in redone["content"]


async def test_variations_post_one_grid_and_a_pick_becomes_a_result(world: World) -> None:
    fake = world.fake
    result = world.results["first"]
    click = await fake.click("carol", result, buttons(result)["Variations"])
    status = await world.answer_to(click)
    grid = await world.reply_to(status)
    picks = buttons(grid)
    assert list(picks) == ["1", "2", "3", "4"]
    assert all(custom_id.startswith("otf:pick:") for custom_id in picks.values())
    assert grid["content"].count("strength ") == 4
    with (
        Image.open(io.BytesIO(fake.attachment_bytes(grid["attachments"][0]))) as image,
        Image.open(io.BytesIO(fake.attachment_bytes(result["attachments"][0]))) as single,
    ):
        assert image.size == (2 * single.width, 2 * single.height)

    pick = await fake.click("dave", grid, picks["3"])
    picked = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == pick["id"] and bool(m["attachments"]),
        RESULT_TIMEOUT,
    )
    assert "variation 3, picked by" in picked["content"]
    assert "Retry" in buttons(picked)
    onwards = await fake.send_message("dave", world.general, "add a hat", reply_to=picked)
    assert "“add a hat”" in (await world.reply_to(onwards))["content"]


async def test_the_status_message_shows_the_edit_forming_unless_the_channel_says_no(world: World) -> None:
    fake = world.fake
    channel = fake.channels["random"]["id"]
    # Long enough for the channel's edit budget (5 per 5 s) to leave room for a preview.
    await world.answer_to(await fake.slash_command("carol", channel, "settings defaults", {"steps": 40}))
    request = await fake.send_message(
        "alice", channel, "make it purple", files=[("photo.png", png_bytes())], mention_bot=True
    )
    status = await fake.wait_for_message(replies_to(request["id"]), 15)

    def preview_of(record: Record) -> bytes | None:
        message = record.result or {}
        if record.kind != "edit" or message.get("id") != status["id"] or not message["attachments"]:
            return None
        return fake.attachment_bytes(message["attachments"][0])

    first = await fake.wait_for(lambda r: preview_of(r) is not None, RESULT_TIMEOUT)
    first_preview = preview_of(first)
    assert first_preview is not None
    assert first_preview.startswith(b"\x89PNG")
    assert (first.result or {})["attachments"][0]["filename"] == "preview.png"
    # How many previews show depends on the channel's edit budget (5 per 5 s) against the edit's
    # speed; that each change of the preview is sent once is test_discord_handlers' to show.
    await world.reply_to(request)
    done = await fake.wait_for_message(
        lambda m: m["id"] == status["id"] and m["content"].startswith("✅"), RESULT_TIMEOUT, kinds=("edit",)
    )
    assert done["attachments"] == [], "the preview goes once the result is posted"
    edits = [r for r in fake.records("edit") if (r.result or {}).get("id") == status["id"]]
    gaps = [b.at - a.at for a, b in itertools.pairwise(edits[:-1])]
    assert all(gap >= 0.25 for gap in gaps), f"previews ride on the throttled status edits, gaps {gaps}"

    await world.answer_to(
        await fake.slash_command("carol", channel, "settings steering", {"previews": False})
    )
    quiet = await fake.send_message(
        "alice", channel, "make it teal", files=[("photo.png", png_bytes())], mention_bot=True
    )
    quiet_status = await fake.wait_for_message(replies_to(quiet["id"]), 15)
    await world.reply_to(quiet)
    assert not any(
        (r.result or {}).get("id") == quiet_status["id"] and (r.result or {}).get("attachments")
        for r in fake.records("edit")
    )


async def test_delete_is_for_the_requester_and_moderators_and_buttons_can_be_theirs_only(
    world: World,
) -> None:
    fake = world.fake
    result = world.results["first"]
    denied = await fake.click("bob", result, buttons(result)["Delete"])
    answer = await world.answer_to(denied)
    assert answer["flags"] & EPHEMERAL
    assert "Only the person who asked" in answer["content"]

    # Settings are written by the store's writer: click once the command has answered.
    await world.answer_to(
        await fake.slash_command("carol", world.general, "settings steering", {"requester_only": True})
    )
    retry = await fake.click("bob", result, buttons(result)["Retry"])
    answer = await world.answer_to(retry)
    assert answer["flags"] & EPHEMERAL
    assert f"only <@{fake.users['alice']['id']}>" in answer["content"]
    details = await world.answer_to(await fake.click("bob", result, buttons(result)["Captions"]))
    assert details["embeds"][0]["title"] == "How this edit was made"

    await fake.click("alice", result, buttons(result)["Delete"])
    deleted = await fake.wait_for(lambda r: r.kind == "delete" and (r.result or {}).get("id") == result["id"])
    assert deleted.method == "DELETE"
    assert result["id"] not in fake.messages
