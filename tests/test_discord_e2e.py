"""End to end: the real ``bot.py`` (tiny models) against a fake Discord, as users would use it.

One bot process serves the whole module (tests run in file order and build on each other's
results), then one restart, without the message content intent, checks that buttons on
old results still work and that a job interrupted by a crash is finished and reported.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.discord import EPHEMERAL, FakeDiscord, buttons
from tests.support.discord.bot_process import (
    BotProcess,
    free_port,
    is_attachment_reply,
    is_result,
    png_bytes,
    replies_to,
    status_final,
    write_bot_config,
)
from tests.support.safety_checker import write_tiny_safety_checker

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

RESULT_TIMEOUT = 90.0
#: ``AllowedMentions.none()`` as discord.py sends it; replies add ``replied_user``.
NO_MENTIONS_REPLY = {"parse": [], "replied_user": False}


class World:
    """The fake, the bot process and what earlier tests produced (results by name)."""

    def __init__(self, fake: FakeDiscord, bot: BotProcess, ops_port: int, tiny_config: Path, database: Path):
        self.fake = fake
        self.bot = bot
        self.ops_port = ops_port
        self.tiny_config = tiny_config
        self.database = database
        self.results: dict[str, dict[str, Any]] = {}

    @property
    def general(self) -> str:
        return self.fake.channels["general"]["id"]

    async def ask(self, user: str, text: str, *, channel: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Post an image with an instruction, mentioning the bot; the request message."""
        files = kwargs.pop("files", [("photo.png", png_bytes())])
        return await self.fake.send_message(
            user,
            channel or self.general,
            text,
            files=files,
            mention_bot=kwargs.pop("mention_bot", True),
            **kwargs,
        )

    async def result_of(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.fake.wait_for_message(is_attachment_reply(request["id"]), RESULT_TIMEOUT)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\nThe bot's log:\n{self.bot.log_tail()}") from None

    async def status_of(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.fake.wait_for_message(replies_to(request["id"]), 15)

    async def final_status(self, status: dict[str, Any], prefix: str) -> dict[str, Any]:
        return await self.fake.wait_for_message(
            status_final(status["id"], prefix), RESULT_TIMEOUT, kinds=("edit",)
        )

    async def interaction_status(self, interaction: dict[str, Any]) -> dict[str, Any]:
        return await self.fake.wait_for_message(
            lambda m: (m.get("interaction_metadata") or {}).get("id") == interaction["id"], 15
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("discord-e2e")
    fake = FakeDiscord()
    await fake.start()
    checker = write_tiny_safety_checker(folder / "safety-checker", flag_everything=True)
    ops_port = free_port()
    config = write_bot_config(
        tiny_config,
        folder / "bot.db",
        {
            "engine": {"limits": {"max_input_bytes": 300_000, "max_instruction_chars": 120}},
            "worker": {"max_queue": 10, "per_user_cap": 3},
            "discord": {
                "progress_interval_s": 0.3,
                "edit_channels": [fake.channels["edits"]["id"]],
                "command_guilds": [fake.guild_id],
                "blocked_words": ["forbidden"],
                "blocked_patterns": [r"\bgore\w*"],
                "safety_model": str(checker),
            },
            "ops": {"enabled": True, "port": ops_port},
        },
    )
    bot = BotProcess(fake, config, folder / "bot.log")
    await bot.start()
    world = World(fake, bot, ops_port, tiny_config, folder / "bot.db")
    try:
        yield world
    finally:
        if world.bot.running:
            await world.bot.kill()
        await fake.stop()


async def test_upload_with_instruction_gets_status_then_result(world: World) -> None:
    fake = world.fake
    asked_at = time.monotonic()
    request = await world.ask("alice", "make it blue")
    status_record = await fake.wait_for(
        lambda r: r.kind == "message" and replies_to(request["id"])(r.result), 15
    )
    status = status_record.result
    assert status is not None
    assert status_record.at - asked_at < 3.0, "the first answer must come at once"
    assert status["content"].startswith("📥")
    running = await fake.wait_for_message(
        lambda m: m["id"] == status["id"] and "%" in m["content"] and buttons(m).get("Cancel"),
        60,
        kinds=("edit",),
    )
    assert buttons(running)["Cancel"].startswith("otf:cancel:")

    result = await world.result_of(request)
    alice = fake.users["alice"]["id"]
    assert "“make it blue”" in result["content"]
    assert f"asked by <@{alice}>" in result["content"]
    assert "\nunderstood as: " in result["content"]
    assert " → " in result["content"]
    # The tiny Phi writes noise, so the captions are the fallback, and the result says so.
    assert "\n-# ⚠️ The language model gave no usable captions" in result["content"]
    assert set(buttons(result)) == {
        "Undo",
        "Retry",
        "Stronger",
        "Subtler",
        "Captions",
        "Fix captions",
        "Variations",
        "Delete",
    }
    assert result["attachments"][0]["filename"].endswith(".png")
    assert fake.attachment_bytes(result["attachments"][0]).startswith(b"\x89PNG")
    done = await world.final_status(status, "✅")
    assert done["components"] == []
    edits_of_status = [r for r in fake.records("edit") if r.result and r.result["id"] == status["id"]]
    progress_edits = edits_of_status[:-1]  # the final edit is immediate by design
    gaps = [b.at - a.at for a, b in itertools.pairwise(progress_edits)]
    assert all(gap >= 0.25 for gap in gaps), f"status edits must be throttled, gaps {gaps}"
    world.results["first"] = result


async def test_a_chain_of_three_replies_each_edits_the_previous_result(world: World) -> None:
    previous = world.results["first"]
    for number, instruction in enumerate(("add snow", "at night", "in watercolor"), start=1):
        reply = await world.fake.send_message("alice", world.general, instruction, reply_to=previous)
        result = await world.result_of(reply)
        assert f"“{instruction}”" in result["content"]
        world.results[f"chain{number}"] = result
        previous = result


async def test_a_second_user_branches_from_an_earlier_result(world: World) -> None:
    reply = await world.fake.send_message(
        "bob", world.general, "make it red", reply_to=world.results["first"]
    )
    result = await world.result_of(reply)
    assert f"asked by <@{world.fake.users['bob']['id']}>" in result["content"]
    world.results["branch"] = result
    # Nothing was overwritten: the chain built on the same result still continues.
    again = await world.fake.send_message(
        "alice", world.general, "add a hat", reply_to=world.results["chain1"]
    )
    assert is_result(await world.result_of(again))


async def test_undo_as_a_reply_shows_the_parent_again(world: World) -> None:
    fake = world.fake
    reply = await fake.send_message("bob", world.general, "undo", reply_to=world.results["chain2"])
    shown = await world.result_of(reply)
    assert "undid “at night”" in shown["content"]
    parent_bytes = fake.attachment_bytes(world.results["chain1"]["attachments"][0])
    assert fake.attachment_bytes(shown["attachments"][0]) == parent_bytes
    # The parent, shown again, is a result like any other: replying to it branches from it.
    onwards = await fake.send_message("bob", world.general, "add a moon", reply_to=shown)
    assert is_result(await world.result_of(onwards))


async def test_undo_of_an_original_says_there_is_nothing_to_undo(world: World) -> None:
    fake = world.fake
    first_undo = await fake.send_message("carol", world.general, "undo", reply_to=world.results["first"])
    original = await world.result_of(first_undo)
    assert "the original image" in original["content"]
    assert buttons(original) == {}
    second_undo = await fake.send_message("carol", world.general, "undo", reply_to=original)
    answer = await fake.wait_for_message(replies_to(second_undo["id"]), 15)
    assert "nothing to undo" in answer["content"]


async def test_history_shows_the_lineage_as_a_contact_sheet(world: World) -> None:
    fake = world.fake
    link = f"https://discord.com/channels/{fake.guild_id}/{world.general}/{world.results['chain3']['id']}"
    interaction = await fake.slash_command("dave", world.general, "history", {"message": link})
    answer = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == interaction["id"] and m["attachments"],
        30,
    )
    assert answer["content"].startswith("🧬 History of this image (5 versions)")
    for instruction in ("make it blue", "add snow", "at night", "in watercolor"):
        assert instruction in answer["content"]
    assert fake.attachment_bytes(answer["attachments"][0]).startswith(b"\x89PNG")

    small = await fake.slash_command(
        "dave", world.general, "history", {"message": link}, attachment_size_limit=8_000
    )
    fitted = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == small["id"] and m["attachments"], 30
    )
    assert fitted["attachments"][0]["filename"].endswith(".webp")
    assert fitted["attachments"][0]["size"] <= 8_000
    assert "to fit the 8 KB upload limit" in fitted["content"]

    latest = await fake.slash_command("dave", world.general, "history")
    answer = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == latest["id"] and m["attachments"], 30
    )
    assert "add a moon" in answer["content"], "without a link: the latest result of the channel"


async def test_buttons_retry_and_captions(world: World) -> None:
    fake = world.fake
    first = world.results["first"]
    click = await fake.click("bob", first, buttons(first)["Retry"])
    status = await world.interaction_status(click)
    assert status["content"].startswith("📥")
    assert not status["flags"] & EPHEMERAL
    retried = await fake.wait_for_message(is_attachment_reply(status["id"]), RESULT_TIMEOUT)
    assert "“make it blue”" in retried["content"]
    assert buttons(retried)["Retry"] != buttons(first)["Retry"], "a retry is a new version"

    click = await fake.click("dave", first, buttons(first)["Captions"])
    details = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == click["id"]
    )
    assert details["flags"] & EPHEMERAL
    assert details["embeds"][0]["title"] == "How this edit was made"
    assert {field["name"] for field in details["embeds"][0]["fields"]} >= {
        "Before",
        "After",
        "Settings",
        "Seed",
    }


async def test_cancel_queued_jobs_and_the_per_user_cap(world: World) -> None:
    fake = world.fake
    # Slow edits in this channel, so the two waiting ones are surely still waiting when clicked.
    edits = fake.channels["edits"]["id"]
    await fake.slash_command("carol", edits, "settings defaults", {"steps": 60})
    await fake.wait_for_message(lambda m: "steps 60" in m["content"], 15)
    requests = [await world.ask("alice", f"variation {n}", channel=edits) for n in range(4)]
    statuses = [await world.status_of(request) for request in requests]
    ids = {status["id"] for status in statuses}
    # The four arrive at once and their images are read in parallel: whichever is admitted last
    # finds the cap reached, refused at once (a reply) or once downloaded (by its status).
    capped = await fake.wait_for_message(
        lambda m: m["id"] in ids and m["content"].startswith("⚠️"), RESULT_TIMEOUT, kinds=("message", "edit")
    )
    assert "You already have 3 edits waiting or running" in capped["content"]
    admitted = [
        (request, status)
        for request, status in zip(requests, statuses, strict=True)
        if status["id"] != capped["id"]
    ]

    # Cancel is on a status from its first message on: however busy the channel, it is there.
    assert all("Cancel" in buttons(status) for _, status in admitted)
    running = await fake.wait_for_message(
        lambda m: m["id"] in ids and m["content"].startswith("🎨"), RESULT_TIMEOUT, kinds=("edit",)
    )
    queued = [status for _, status in admitted if status["id"] != running["id"]]
    assert len(queued) == 2
    not_allowed = await fake.click("bob", queued[0], buttons(queued[0])["Cancel"])
    refusal = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == not_allowed["id"]
    )
    assert refusal["flags"] & EPHEMERAL
    assert "Only the person who asked" in refusal["content"]
    await fake.click("alice", queued[1], buttons(queued[1])["Cancel"])
    await fake.click("carol", queued[0], buttons(queued[0])["Cancel"])  # carol moderates (Manage Messages)
    for status in queued:
        cancelled = await world.final_status(status, "🚫")
        assert cancelled["components"] == []
    [running_request] = [request for request, status in admitted if status["id"] == running["id"]]
    assert is_result(await world.result_of(running_request))
    await fake.slash_command("carol", edits, "settings defaults", {"reset": True})
    await fake.wait_for_message(
        lambda m: "changed the settings of this channel" in m["content"] and "steps 60" not in m["content"],
        15,
    )


async def test_slash_command_edit(world: World) -> None:
    fake = world.fake
    interaction = await fake.slash_command(
        "bob",
        world.general,
        "edit",
        {"instruction": "make it green"},
        files={"image": ("pic.png", png_bytes())},
    )
    status = await world.interaction_status(interaction)
    result = await fake.wait_for_message(is_attachment_reply(status["id"]), RESULT_TIMEOUT)
    assert "“make it green”" in result["content"]
    await fake.wait_for_message(status_final(status["id"], "✅"), RESULT_TIMEOUT, kinds=("edit",))


async def test_context_menu_opens_a_modal_and_edits_the_image(world: World) -> None:
    fake = world.fake
    target = await fake.send_message(
        "dave", world.general, "my holiday photo", files=[("beach.png", png_bytes())]
    )
    menu = await fake.message_command("carol", "Edit image", target)
    await fake.wait_for(lambda r: r.kind == "callback" and r.result and r.result["type"] == 9, 15)
    (text_input,) = fake.modal_inputs(menu)
    submitted = await fake.submit_modal("carol", menu, {text_input: "add palm trees"})
    status = await world.interaction_status(submitted)
    result = await fake.wait_for_message(is_attachment_reply(status["id"]), RESULT_TIMEOUT)
    assert "“add palm trees”" in result["content"]

    on_result = await fake.message_command("carol", "Edit image", world.results["chain3"])
    await fake.wait_for(
        lambda r: r.kind == "callback" and r.result["interaction"]["id"] == on_result["id"], 15
    )
    (text_input,) = fake.modal_inputs(on_result)
    submitted = await fake.submit_modal("carol", on_result, {text_input: "add a frame"})
    status = await world.interaction_status(submitted)
    continued = await fake.wait_for_message(is_attachment_reply(status["id"]), RESULT_TIMEOUT)
    history = await fake.slash_command("carol", world.general, "history", {"message": continued["id"]})
    answer = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == history["id"] and m["attachments"], 30
    )
    assert "(6 versions)" in answer["content"], "the menu on a result continues that result"

    no_image = await fake.send_message("dave", world.general, "just words")
    refused = await fake.message_command("dave", "Edit image", no_image)
    answer = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == refused["id"]
    )
    assert answer["flags"] & EPHEMERAL
    assert "no image" in answer["content"]


@pytest.mark.parametrize(
    ("files", "text", "expected"),
    [
        ([("notes.txt", b"hello")], "make it blue", "is not an image I can edit"),
        ([("huge.png", b"\x89PNG" + b"0" * 400_000)], "make it blue", "the most I accept is"),
        ([("broken.png", b"\x89PNG not really")], "make it blue", "couldn't read that file as an image"),
        ([("photo.png", png_bytes())], "", "What should I change?"),
        ([("photo.png", png_bytes())], "x" * 200, "characters long"),
        ([("photo.png", png_bytes())], "make it forbidden", "moderators have blocked"),
        ([("photo.png", png_bytes())], "add Gore everywhere", "moderators have blocked"),
        ([("photo.png", png_bytes())], "\u200b\u200c\u2060", "What should I change?"),
        ([("photo.png", png_bytes())], "make it fоr\u200bbіdden", "moderators have blocked"),
        ([("x" * 2400 + ".txt", b"hello")], "make it blue", "is not an image I can edit"),
    ],
    ids=[
        "not-an-image",
        "too-large",
        "corrupt",
        "no-instruction",
        "too-long",
        "blocked-word",
        "blocked-pattern",
        "zero-width-only",
        "zero-width-and-look-alike-blocked-word",
        "2400-character-filename",
    ],
)
async def test_bad_inputs_get_a_clear_answer(
    world: World, files: list[Any], text: str, expected: str
) -> None:
    request = await world.ask("dave", text, files=files)
    answer = await world.fake.wait_for_message(
        lambda m: replies_to(request["id"])(m) and "⚠️" in m["content"], 30, kinds=("message", "edit")
    )
    assert expected in answer["content"]
    assert len(answer["content"]) <= 2000
    assert not answer["attachments"]


async def test_discord_errors_are_retried_or_reported_and_the_bot_keeps_serving(world: World) -> None:
    fake = world.fake
    fake.fail_next("POST", rf"/channels/{world.general}/messages$", status=500, times=1)
    fake.fail_next("PATCH", rf"/channels/{world.general}/messages/\d+$", status=429, times=2)
    request = await world.ask("bob", "make it purple")
    assert is_result(await world.result_of(request))

    request = await world.ask("bob", "make it orange")
    status = await world.status_of(request)
    fake.fail_next(
        "POST",
        rf"/channels/{world.general}/messages$",
        status=403,
        body={"code": 50013, "message": "Missing Permissions"},
    )
    failed = await world.final_status(status, "⚠️")
    assert "missing a permission" in failed["content"]
    assert is_result(await world.result_of(await world.ask("bob", "make it yellow")))


async def test_direct_messages_and_threads(world: World) -> None:
    fake = world.fake
    dm = fake.dm_channel("alice")["id"]
    request = await world.ask("alice", "make it teal", channel=dm, mention_bot=False)
    result = await world.result_of(request)
    assert result["channel_id"] == dm
    assert "guild_id" not in result

    world.results["dm"] = result
    hint = await fake.send_message("alice", dm, "make it teal please")  # no image
    assert "send it to me with what to change" in (await world.status_of(hint))["content"]

    thread = await fake.create_thread("bob", world.general, "bob's experiments")
    request = await world.ask("bob", "make it pink", channel=thread["id"])
    result = await world.result_of(request)
    assert result["channel_id"] == thread["id"]
    reply = await fake.send_message("bob", thread["id"], "add clouds", reply_to=result)
    assert (await world.result_of(reply))["channel_id"] == thread["id"]


async def test_a_forged_click_from_another_place_reaches_nothing(world: World) -> None:
    """A Retry click "in the server" on alice's private result: refused, nothing queued."""
    fake = world.fake
    private = world.results["dm"]
    click = await fake.click("carol", private, buttons(private)["Retry"], forged_in=world.general)
    answer = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == click["id"], 15
    )
    assert answer["flags"] & EPHEMERAL
    assert "another server or a private chat" in answer["content"]


async def test_settings_need_manage_server_and_change_edit_channels(world: World) -> None:
    fake = world.fake
    random_channel = fake.channels["random"]["id"]
    denied = await fake.slash_command("alice", random_channel, "settings edit_channel", {"enabled": True})
    answer = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == denied["id"]
    )
    assert answer["flags"] & EPHEMERAL
    assert "Manage Server" in answer["content"]

    await fake.slash_command("carol", random_channel, "settings edit_channel", {"enabled": True})
    await fake.wait_for_message(lambda m: "is now an edit channel" in m["content"], 15)
    request = await world.ask("alice", "make it grey", channel=random_channel, mention_bot=False)
    assert is_result(await world.result_of(request))
    chatter = await world.ask(
        "alice", "nice one!", channel=fake.channels["edits"]["id"], mention_bot=False, files=[]
    )
    await asyncio.sleep(1.0)
    assert not [m for m in fake.records("message") if replies_to(chatter["id"])(m.result)]

    interaction = await fake.slash_command("carol", random_channel, "settings defaults", {"steps": 3})
    changed = await fake.wait_for_message(
        lambda m: (m.get("interaction_metadata") or {}).get("id") == interaction["id"]
    )
    assert "steps 3" in changed["content"]


async def test_safety_check_withholds_a_flagged_result(world: World) -> None:
    fake = world.fake
    await fake.slash_command("carol", world.general, "settings safety_check", {"enabled": True})
    await fake.wait_for_message(lambda m: "safety check of results is now on" in m["content"], 15)
    request = await world.ask("alice", "make it silver")
    status = await world.status_of(request)
    withheld = await world.final_status(status, "⚠️")
    assert "withheld" in withheld["content"]
    assert not [r for r in fake.records("message") if is_attachment_reply(request["id"])(r.result)]
    await fake.slash_command("carol", world.general, "settings safety_check", {"enabled": False})
    await fake.wait_for_message(lambda m: "safety check of results is now off" in m["content"], 15)


async def test_ops_endpoint_reports_health_and_metrics(world: World) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{world.ops_port}/health") as response:
            health = json.loads(await response.text())
            assert response.status == 200
        async with session.get(f"http://127.0.0.1:{world.ops_port}/metrics") as response:
            metrics = await response.text()
    assert health["status"] == "ok"
    assert health["discord_connected"] is True
    assert "onthefly_queue_depth 0.0" in metrics
    assert "onthefly_up 1.0" in metrics
    assert 'onthefly_jobs{state="done"}' in metrics
    assert 'onthefly_jobs{state="cancelled"} 2.0' in metrics
    assert 'onthefly_edits_total{outcome="cancelled"} 2.0' in metrics
    assert 'onthefly_edit_stage_seconds_count{stage="invert"}' in metrics


async def test_allowed_mentions_are_none_on_everything_the_bot_sent(world: World) -> None:
    sent = [r for r in world.fake.log if r.kind in ("message", "edit") and r.method in ("POST", "PATCH")]
    assert sent
    for record in sent:
        mentions = (record.body or {}).get("allowed_mentions")
        assert mentions in ({"parse": []}, NO_MENTIONS_REPLY), (record.path, mentions)


async def test_after_a_crash_and_a_restart_without_message_content(world: World) -> None:
    fake = world.fake
    request = await world.ask("alice", "make it gold")
    status = await world.status_of(request)
    # A crash once the job is under way: queued, running or even done, the outbox delivers it.
    await fake.wait_for_message(lambda m: m["id"] == status["id"], 60, kinds=("edit",))
    await world.bot.kill()

    sections = {
        "discord": {
            "message_content": False,
            "open_threads": True,
            "command_guilds": [fake.guild_id],
            "progress_interval_s": 0.3,
        }
    }
    config = write_bot_config(world.tiny_config, world.database, sections)
    world.bot = BotProcess(fake, config, world.bot.log_path)
    await world.bot.start()
    recovered = await world.result_of(request)
    assert "“make it gold”" in recovered["content"]

    old = world.results["chain1"]
    click = await fake.click("bob", old, buttons(old)["Stronger"])
    status = await world.interaction_status(click)
    stronger = await fake.wait_for_message(is_attachment_reply(status["id"]), RESULT_TIMEOUT)
    assert "“add snow”" in stronger["content"]

    # Without the intent a reply that does not ping the bot arrives empty, so it is left alone;
    # one that mentions it still works.
    quiet = await fake.send_message("alice", world.general, "add rain", reply_to=old, reply_ping=False)
    loud = await fake.send_message("alice", world.general, "add fog", reply_to=old)
    assert "“add fog”" in (await world.result_of(loud))["content"]
    assert not [r for r in fake.records("message") if replies_to(quiet["id"])(r.result)]

    # With open_threads, a new conversation gets its own thread, started from the request.
    request = await world.ask("carol", "make it white")
    thread = await fake.wait_for(lambda r: r.kind == "thread" and r.result["id"] == request["id"], 15)
    assert thread.result["name"] == "make it white"
    result = await fake.wait_for_message(
        lambda m: m["channel_id"] == request["id"] and is_result(m), RESULT_TIMEOUT
    )
    assert "“make it white”" in result["content"]


async def test_sigterm_closes_cleanly_and_tells_waiting_users(world: World) -> None:
    fake = world.fake
    requests = [await world.ask("bob", f"make it bronze {n}") for n in range(3)]
    # open_threads is on: each request got a thread (its id is the request's) holding its status.
    # Their images are read in parallel, so whichever is queued last waits "number 2 in the queue".
    threads = {request["id"] for request in requests}
    queued = await fake.wait_for_message(
        lambda m: m["channel_id"] in threads and "in the queue" in m["content"], 30, kinds=("edit",)
    )
    assert await world.bot.stop() == 0
    told = [r.result for r in fake.records("edit") if r.result and r.result["id"] == queued["id"]][-1]
    assert "restarting; your edit is saved" in told["content"]
    assert "Traceback" not in world.bot.log_tail(400)
