"""The Discord front end without the network: texts, throttling, file fitting, config, permissions."""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from PIL import Image

from handlers.discord import delivery, intake, render
from handlers.discord.bot import EditBot
from handlers.discord.cogs import EditCommands
from handlers.discord.delivery import Destination
from handlers.discord.errors import UNEXPECTED, BadRequest, report, user_message
from handlers.discord.flows import ANOTHER_SERVER, DM_HINT, REPLY_HINT, Relay
from handlers.discord.moderation import InstructionFilter
from handlers.discord.preferences import SERVER_WIDE, Preferences, channel_place
from handlers.discord.status import InteractionStatus, StatusBoard
from handlers.discord.views import InstructionModal
from sessions import (
    AppConfig,
    Author,
    ConfigError,
    DiscordConfig,
    EditCancelled,
    EditSettings,
    NotAllowed,
    OpsConfig,
    Place,
    Progress,
    Rejected,
    Version,
    load_config,
    normalise_instruction,
)
from sessions.store import Store
from tests.support.editor import StandInEditor, stand_in_app


def version(**changes: Any) -> Version:
    values: dict[str, Any] = {
        "id": "v2",
        "conversation_id": "c1",
        "parent_id": "v1",
        "author_id": "42",
        "author_name": "Alice",
        "instruction": "make it *snowy*",
        "caption": "a photo of a cat",
        "before_captions": ("a photo of a cat", "a cat on grass"),
        "after_captions": ("a photo of a cat in snow", "a cat on snow"),
        "settings": EditSettings(steps=4),
        "seed": 7,
        "width": 64,
        "height": 48,
        "created_at": 0.0,
    }
    values.update(changes)
    return Version(**values)


# --- texts -----------------------------------------------------------------------------------


def test_result_text_names_instruction_author_and_reading() -> None:
    text = render.result_text(version(), note="sent as WebP")
    lines = text.splitlines()
    assert lines[0] == "“make it \\*snowy\\*” — asked by <@42>"
    assert lines[1] == "understood as: a photo of a cat → a photo of a cat in snow"
    assert lines[2] == "-# sent as WebP"


def test_result_text_stays_within_discords_limit() -> None:
    long = version(instruction="x" * 5000, before_captions=("b" * 3000,), after_captions=("a" * 3000,))
    assert len(render.result_text(long)) <= render.MAX_CONTENT


def test_status_text_for_waiting_and_running_jobs() -> None:
    assert "next in line" in render.status_text(Progress("j", "queued", queue_position=1), "42", "go")
    assert "number 3 in the queue" in render.status_text(
        Progress("j", "queued", queue_position=3), "42", "go"
    )
    running = render.status_text(Progress("j", "running", stage="edit", step=2, total=4), "42", "go")
    assert running.startswith("🎨 <@42> “go” — editing, ")
    assert running.endswith("%")


def test_overall_percent_rises_through_the_stages_from_0_to_100() -> None:
    stages = ("caption", "invert", "captions", "reconstruct", "edit", "decode")
    values = [render.overall_percent(stage, step, 4) for stage in stages for step in range(5)]
    assert values == sorted(values)
    assert values[0] == 0
    assert values[-1] == 100
    assert render.overall_percent("unknown", 1, 2) == 0


def test_quote_shortens_and_escapes() -> None:
    quoted = render.quote("**bold**  and\nlong " + "y" * 300, limit=20)
    assert quoted.startswith("“\\*\\*bold\\*\\* and long")
    assert quoted.endswith("…”")


def test_history_text_numbers_the_lineage_and_elides_the_middle() -> None:
    original = version(id="v0", parent_id=None, instruction=None)
    lineage = [original] + [version(id=f"v{n}", instruction=f"step {n}") for n in range(1, 8)]
    text = render.history_text(lineage, limit=4)
    assert "(8 versions)" in text
    assert "1. original, uploaded by <@42>" in text
    assert "… 4 earlier versions not shown" in text
    assert "step 4" not in text
    assert "5. " not in text
    assert "6. “step 5” by <@42>" in text


def test_captions_embed_lists_both_sides_and_settings() -> None:
    embed = render.captions_embed(version())
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Before"] == "• a photo of a cat\n• a cat on grass"
    assert "steps 4" in fields["Settings"]
    assert fields["Seed"] == "7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://discord.com/channels/1/222222222222222222/333333333333333333",
            (222222222222222222, 333333333333333333),
        ),
        (
            "https://ptb.discord.com/channels/@me/222222222222222222/333333333333333333",
            (222222222222222222, 333333333333333333),
        ),
        (" 333333333333333333 ", (None, 333333333333333333)),
        ("not a link", None),
        ("12", None),
    ],
)
def test_message_references_from_links_and_ids(text: str, expected: tuple[int | None, int] | None) -> None:
    assert render.parse_message_reference(text) == expected


def test_the_bot_mention_is_taken_out_of_the_instruction() -> None:
    assert render.without_bot_mention("<@99>  make it <@!99> blue ", 99) == "make it blue"
    assert render.without_bot_mention("<@98> hi", 99) == "<@98> hi"


# --- fitting results to the upload limit ------------------------------------------------------


def noise_png(size: tuple[int, int]) -> bytes:
    generator = random.Random(0)
    image = Image.frombytes(
        "RGB", size, bytes(generator.getrandbits(8) for _ in range(size[0] * size[1] * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_png_that_fits_is_sent_unchanged() -> None:
    png = noise_png((32, 32))
    fitted = render.fit_image(png, len(png), "edit-v1")
    assert (fitted.data, fitted.filename, fitted.note) == (png, "edit-v1.png", "")


def test_a_png_too_large_becomes_webp_then_smaller() -> None:
    png = noise_png((256, 192))
    lossy = render.fit_image(png, len(png) - 1, "edit-v1")
    assert lossy.filename == "edit-v1.webp"
    assert len(lossy.data) < len(png)
    assert "WebP" in lossy.note
    assert "×" not in lossy.note
    tiny_limit = render.fit_image(png, 6_000, "edit-v1")
    assert len(tiny_limit.data) <= 6_000
    with Image.open(io.BytesIO(tiny_limit.data)) as shrunk:
        assert shrunk.width < 256
        assert abs(shrunk.width / shrunk.height - 256 / 192) < 0.05
    assert f"{shrunk.width}×{shrunk.height}" in tiny_limit.note


def test_an_impossible_limit_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot be made to fit"):
        render.fit_image(noise_png((128, 128)), 50, "edit-v1")


# --- the status board -------------------------------------------------------------------------


class RecordingStatus:
    """A status message that records its edits (and when each began, by the monotonic clock)."""

    def __init__(self, fail: bool = False, message_id: int = 1, channel_id: int = 3) -> None:
        self.message_id = message_id
        self.channel_id = channel_id
        self.edits: list[tuple[str, tuple[str, ...] | None]] = []
        self.started: list[float] = []
        self.fail = fail

    async def edit(
        self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
    ) -> None:
        self.started.append(time.monotonic())
        self.edits.append((content, None if view is None else tuple(i.custom_id for i in view.children)))  # type: ignore[attr-defined]
        if self.fail:
            raise discord.HTTPException(_Response(500), "boom")


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "error"


def view_with(custom_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="Cancel", custom_id=custom_id))
    return view


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the board to get somewhere (generously: no test asserts how fast)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the board never got there")


async def test_updates_are_throttled_and_the_latest_wins() -> None:
    status = RecordingStatus()
    board = StatusBoard(interval_s=0.2)
    view = view_with("otf:cancel:j1")
    for step in range(50):
        board.show(status, f"step {step}", view)
        await asyncio.sleep(0.01)
    await until(lambda: status.edits[-1][0] == "step 49")
    texts = [text for text, _ in status.edits]
    assert texts[0] == "step 0"
    assert all(later - earlier >= 0.2 for earlier, later in itertools.pairwise(status.started))
    assert await board.finish(status, "done")
    assert status.edits[-1] == ("done", None)
    await board.close()


async def test_finish_is_immediate_and_nothing_is_sent_twice() -> None:
    status = RecordingStatus()
    board = StatusBoard(interval_s=10.0)
    board.show(status, "queued", view_with("otf:cancel:j1"))
    await until(lambda: bool(status.edits))
    board.show(status, "queued", view_with("otf:cancel:j1"))
    board.show(status, "running", view_with("otf:cancel:j1"))  # waits 10 s ... until the end comes
    await board.finish(status, "cancelled")
    assert status.edits == [("queued", ("otf:cancel:j1",)), ("cancelled", None)]
    await board.close()


async def test_a_failing_edit_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    status = RecordingStatus(fail=True)
    board = StatusBoard(interval_s=0.0)
    with caplog.at_level(logging.WARNING):
        assert not await board.finish(status, "done")  # Discord failed: not delivered, try later
    assert "could not edit status message" in caplog.text
    await board.close()


@pytest.mark.parametrize(("limited", "shown"), [(1, True), (100, False)], ids=["once", "always"])
async def test_a_rate_limited_final_edit_is_tried_again_not_taken_as_refused(
    limited: int, shown: bool
) -> None:
    """A 429 means "later", not "gone": the job is marked delivered only once the end is shown."""

    class RateLimited(RecordingStatus):
        async def edit(
            self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
        ) -> None:
            await super().edit(content, view)
            if len(self.edits) <= limited:
                raise discord.HTTPException(_Response(429), "You are being rate limited.")  # type: ignore[arg-type]

    status = RateLimited()
    board = StatusBoard(interval_s=0.0, per_window=2, window_s=0.05)
    assert await board.finish(status, "done") is shown
    assert 1 < len(status.edits) < 10
    assert {text for text, _ in status.edits} == {"done"}
    await board.close()


async def test_the_statuses_of_a_channel_share_its_budget_and_finals_go_first() -> None:
    """50 queued statuses in one channel: at most 3 edits per window, and ends before progress."""
    board = StatusBoard(interval_s=0.0, per_window=3, window_s=0.3)
    statuses = [RecordingStatus(message_id=n) for n in range(50)]
    for position, status in enumerate(statuses, 1):
        board.show(status, f"number {position} in the queue", None)
    finals = [asyncio.create_task(board.finish(status, "done")) for status in statuses[45:]]
    await asyncio.gather(*finals)
    edits = sorted(
        (at, text) for status in statuses for at, (text, _) in zip(status.started, status.edits, strict=True)
    )
    started = [at for at, _ in edits]
    # The first three edits went out at once (firsts); the five ends came next, ahead of 42 firsts.
    assert [text for _, text in edits[3:8]] == ["done"] * 5
    assert all(status.edits[-1] == ("done", None) for status in statuses[45:])
    assert all(later - earlier >= 0.3 for earlier, later in zip(started, started[3:], strict=False))

    other_channel = RecordingStatus(message_id=99, channel_id=4)
    assert await board.finish(other_channel, "done")  # another channel has a budget of its own
    await board.close()


async def test_queue_places_coalesce_to_the_newest() -> None:
    status = RecordingStatus()
    board = StatusBoard(interval_s=0.3)
    board.show(status, "number 20 in the queue", None)
    await until(lambda: bool(status.edits))
    for position in range(19, 0, -1):
        board.show(status, f"number {position} in the queue", None)
    await until(lambda: status.edits[-1][0] == "number 1 in the queue")
    assert [text for text, _ in status.edits] == ["number 20 in the queue", "number 1 in the queue"]
    await board.close()


class _OldInteraction:
    """Only what InteractionStatus reads of an interaction: its age and its edit call."""

    def __init__(self, age: datetime.timedelta) -> None:
        self.created_at = discord.utils.utcnow() - age
        self.edits: list[str] = []

    async def edit_original_response(self, *, content: str, view: Any, allowed_mentions: Any) -> None:
        self.edits.append(content)


@pytest.mark.parametrize(("age_minutes", "through_token"), [(1, True), (14.5, False)])
async def test_an_interaction_status_stops_using_its_token_before_it_expires(
    age_minutes: float, through_token: bool
) -> None:
    interaction = _OldInteraction(datetime.timedelta(minutes=age_minutes))
    fallback = RecordingStatus()
    status = InteractionStatus(interaction, 1, fallback)  # type: ignore[arg-type]
    await status.edit("working", None)
    assert (interaction.edits == ["working"]) is through_token
    assert (fallback.edits == [("working", None)]) is not through_token


# --- errors, moderation, permissions ------------------------------------------------------------


def test_user_errors_are_shown_as_written_and_bugs_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert user_message(NotAllowed("Only you may.")) == "Only you may."
    assert user_message(BadRequest("No image.")) == "No image."
    wrapped = app_commands.CommandInvokeError(SimpleNamespace(name="edit"), BadRequest("No image."))  # type: ignore[arg-type]
    assert user_message(wrapped) == "No image."
    assert user_message(app_commands.MissingPermissions(["manage_guild"])) == (
        "You need the Manage Server permission to do that."
    )
    assert "missing a permission" in user_message(discord.Forbidden(_Response(403), "Missing Access"))
    with caplog.at_level(logging.ERROR):
        assert user_message(KeyError("oops")) == UNEXPECTED
    assert "unexpected error" in caplog.text


def test_blocked_words_match_whole_words_in_any_case_and_patterns_match_anywhere() -> None:
    check = InstructionFilter(["blood", " "], [r"\bgore\w*"]).check
    for refused in ("add BLOOD!", "more Gore", "gorey details"):
        with pytest.raises(BadRequest, match="moderators have blocked"):
            check(refused)
    for allowed in ("bloodhound in the park", "make it blue"):
        check(allowed)


async def test_settings_need_manage_server_and_only_work_in_servers(tmp_path: Path) -> None:
    """What the tree would register: /settings is for Manage Server and guild-only."""
    bot = EditBot(_NoService(), DiscordConfig(), OpsConfig())  # type: ignore[arg-type]
    await bot.add_cog(EditCommands(bot, bot.relay, bot.service, bot.preferences, True))
    commands = {c.name: c.to_dict(bot.tree) for c in bot.tree.get_commands()}
    assert set(commands) == {"edit", "history", "help", "settings", "Edit image"}
    assert commands["settings"]["default_member_permissions"] == discord.Permissions(manage_guild=True).value
    assert commands["settings"]["dm_permission"] is False
    assert {o["name"] for o in commands["settings"]["options"]} == {
        "show",
        "defaults",
        "edit_channel",
        "safety_check",
        "steering",
    }
    assert [(o["name"], o["type"]) for o in commands["edit"]["options"]] == [
        ("image", 11),
        ("instruction", 3),
    ]
    assert commands["Edit image"]["type"] == 3
    await bot.close()


class _NoService:
    """Enough of the service for building the bot without running it."""

    def stats(self) -> dict[str, Any]:
        return {}

    async def stop(self) -> None:
        return None


# --- config, places, metrics ----------------------------------------------------------------------


def discord_config(section: dict[str, Any], base_dir: str | Path = "/x") -> DiscordConfig:
    return AppConfig.from_mapping({"discord": section}, base_dir).discord


def test_config_reads_ids_as_text_and_refuses_mistakes(tmp_path: Path) -> None:
    config = discord_config({"edit_channels": [123, "456"], "safety_model": "checker"})
    assert config.edit_channels == ("123", "456")
    assert config.safety_model == "checker"  # not a local folder, so a hub id
    (tmp_path / "checker").mkdir()
    local = discord_config({"safety_model": "checker"}, tmp_path)
    assert local.safety_model == str(tmp_path / "checker")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        discord_config({"blocked_patterns": ["("]})
    with pytest.raises(ConfigError, match="unknown key"):
        discord_config({"message_contents": True})
    with pytest.raises(ConfigError, match="numbers"):
        discord_config({"edit_channels": ["general"]})
    assert AppConfig.from_mapping({}).ops == OpsConfig(enabled=False, host="127.0.0.1", port=9464)


def test_the_shipped_config_documents_the_defaults() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    assert config.discord == DiscordConfig()
    assert config.ops == OpsConfig()


def test_reply_context_round_trips_and_ignores_other_transports() -> None:
    destination = Destination(channel_id=5, guild_id=None, reply_to=7, status_message_id=None)
    assert Destination.from_context(destination.to_context()) == destination
    assert Destination.from_context({"transport": "console", "channel_id": "5"}) is None
    assert Destination.from_context({}) is None


def test_a_status_left_in_the_channel_of_a_thread_is_found_there_after_a_restart() -> None:
    in_thread = Destination(5, 1, None, 7, status_channel_id=3)
    assert Destination.from_context(in_thread.to_context()) == in_thread
    status = in_thread.status(_bot())
    assert status is not None
    assert (status.channel_id, status.message_id) == (3, 7)
    written_before = {"transport": "discord", "channel_id": "5", "guild_id": "1", "status_message_id": "7"}
    status = Destination.from_context(written_before).status(_bot())  # type: ignore[union-attr]
    assert status is not None
    assert status.channel_id == 5


async def test_preferences_persist_in_the_store(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "bot.db")
    try:
        service_like = _Options(store)
        config = DiscordConfig(edit_channels=("11",), safety_check=False)
        preferences = Preferences(service_like, config, safety_available=True)
        await asyncio.gather(  # changes made at once all stay
            preferences.set_edit_channel(1, 22, True),
            preferences.set_edit_channel(1, 33, True),
            preferences.set_edit_channel(1, 11, False),  # configured channels stay
        )
        await preferences.set_edit_channel(1, 33, False)
        await preferences.set_safety_check(1, True)
        await preferences.remember_latest(channel_place(1, 22), "v9")
        again = Preferences(service_like, config, safety_available=True)
        assert again.edit_channels(1) == ("11", "22")
        assert again.is_edit_channel(1, 22)
        assert not again.is_edit_channel(2, 22)
        assert not again.is_edit_channel(None, 11)
        assert again.safety_check(1) is True
        assert again.safety_check(2) is False
        assert again.latest_version(channel_place(1, 22)) == "v9"
        assert store.place_options(Place("discord", "1", SERVER_WIDE))["edit_channels"] == ["22"]
        assert Preferences(service_like, config, safety_available=False).safety_check(1) is None
    finally:
        store.close()


class _Options:
    """The two service methods Preferences uses, straight onto a real store (a write that
    yields to the loop first, as the service's writer does)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def channel_options(self, place: Place) -> dict[str, Any]:
        return self.store.place_options(place)

    async def update_channel_options(self, place: Place, **changes: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return self.store.update_place(place, "options", changes)


# --- relay and command flows with stand-ins (regressions) -------------------------------------------


BOT_USER = SimpleNamespace(id=99)


def _bot() -> Any:
    """Enough of a client for the relay: its user, no guilds, channels whose messages do nothing."""
    channel = SimpleNamespace(get_partial_message=lambda message_id: None)
    return SimpleNamespace(
        user=BOT_USER,
        get_guild=lambda guild_id: None,
        get_partial_messageable=lambda channel_id, guild_id=None: channel,
    )


def _relay(service: Any, **config: Any) -> Relay:
    return Relay(
        _bot(),
        service,
        config=DiscordConfig(**config),
        preferences=None,  # type: ignore[arg-type]
        safety=None,
    )


class _FakeInteraction:
    """An interaction whose first response is the status message (id 77) and that records edits."""

    def __init__(self) -> None:
        self.created_at = discord.utils.utcnow()
        self.channel_id = 3
        self.guild_id = 1
        self.channel = SimpleNamespace(id=3)
        self.user = SimpleNamespace(id=5, display_name="Bob")
        self.permissions = discord.Permissions.none()
        self.edits: list[str] = []
        self.sent: list[str] = []

        async def send_message(content: str, **kwargs: Any) -> Any:
            self.sent.append(content)
            return SimpleNamespace(message_id=77)

        async def defer(**kwargs: Any) -> None:
            self.sent.append("(thinking)")

        self.response = SimpleNamespace(
            send_message=send_message, defer=defer, is_done=lambda: bool(self.sent)
        )
        self.filesize_limit = 10 * 1024 * 1024

    async def edit_original_response(self, *, content: str, allowed_mentions: Any, **kwargs: Any) -> None:
        assert allowed_mentions is not None
        self.edits.append(content)


class _Outbox:
    """The part of the service's outbox a delivery marks."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def mark_delivered(self, job_id: str) -> None:
        self.delivered.append(job_id)


async def test_a_failing_progress_stream_still_ends_with_the_final_status() -> None:
    class Ticket:
        job = SimpleNamespace(id="j1", requester_id="42", instruction="make it snowy")

        async def progress(self) -> Any:
            yield Progress("j1", "queued", queue_position=1)
            raise RuntimeError("progress broke")

        async def result(self) -> Any:
            await asyncio.sleep(0.05)
            raise EditCancelled("cancelled")

    status = RecordingStatus()
    outbox = _Outbox()
    following = delivery.Delivery(
        _bot(),
        SimpleNamespace(outbox=outbox),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        preferences=None,  # type: ignore[arg-type]
        safety=None,
        progress_interval_s=0.0,
    )
    await following.follow(Ticket(), status, Destination(3, 1, None, 1))  # type: ignore[arg-type]
    assert status.edits[-1] == (render.cancelled_text("42", "make it snowy"), None)
    assert outbox.delivered == ["j1"]
    await following.close()


async def test_a_dropped_connection_does_not_stop_the_status_updates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Flaky(RecordingStatus):
        async def edit(
            self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
        ) -> None:
            await super().edit(content, view)
            if len(self.edits) == 1:
                raise aiohttp.ServerDisconnectedError()

    status = Flaky()
    board = StatusBoard(interval_s=0.0)
    with caplog.at_level(logging.WARNING):
        board.show(status, "queued", None)
        await until(lambda: len(status.edits) == 1)
        board.show(status, "running", None)
        await until(lambda: len(status.edits) == 2)
        assert await board.finish(status, "done")
    assert [text for text, _ in status.edits] == ["queued", "running", "done"]
    assert "could not edit status message" in caplog.text
    await board.close()


def _message(content: str, *, guild: Any = None, reference: Any = None, replies: list[str]) -> Any:
    async def reply(text: str, **kwargs: Any) -> None:
        assert kwargs["allowed_mentions"] is not None
        replies.append(text)

    return SimpleNamespace(
        author=SimpleNamespace(bot=False, id=5),
        type=discord.MessageType.reply if reference else discord.MessageType.default,
        content=content,
        reference=reference,
        mentions=[BOT_USER] if "<@99>" in content else [],
        attachments=[],
        guild=guild,
        channel=SimpleNamespace(id=3),
        reply=reply,
    )


async def test_mentioning_the_bot_in_an_empty_reply_to_a_result_gets_a_hint() -> None:
    replies: list[str] = []
    service = SimpleNamespace(version_for_message=lambda transport, message_id: version())
    relay = _relay(service)
    reference = SimpleNamespace(message_id=10, resolved=None)
    await relay.on_message(_message("<@99>", reference=reference, replies=replies))  # type: ignore[arg-type]
    assert replies == [REPLY_HINT]


async def test_a_direct_message_without_an_image_gets_a_hint() -> None:
    replies: list[str] = []
    relay = _relay(SimpleNamespace())
    await relay.on_message(_message("make it snowy", replies=replies))  # type: ignore[arg-type]
    assert replies == [DM_HINT]
    await relay.on_message(_message("hello", guild=SimpleNamespace(id=1), replies=replies))  # type: ignore[arg-type]
    assert replies == [DM_HINT], "in a server, chatter without a mention is left alone"


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (discord.Forbidden(_Response(403), "Missing Permissions"), "missing a permission"),  # type: ignore[arg-type]
        (aiohttp.ServerDisconnectedError(), "couldn't reach Discord"),
        (TimeoutError(), "couldn't reach Discord"),
    ],
    ids=["refused", "disconnected", "timed-out"],
)
async def test_a_thread_that_cannot_be_opened_turns_the_status_into_the_reason(
    failure: Exception, said: str
) -> None:
    started: list[Any] = []
    service = SimpleNamespace(start_edit=lambda *a, **k: started.append(a), new_job_id=lambda: "j1")
    relay = _relay(service, open_threads=True)

    async def no_thread(interaction: Any, instruction: str) -> None:
        raise failure

    relay._thread_for = no_thread  # type: ignore[method-assign]
    interaction = _FakeInteraction()
    attachment = SimpleNamespace(id=1, url="http://cdn/x.png")
    received = await relay._respond_received(interaction, intake.author_of_interaction(interaction), "go")  # type: ignore[arg-type]
    await relay._start_from_interaction(interaction, received, attachment)  # type: ignore[arg-type]
    assert len(interaction.sent) == 1
    assert said in interaction.edits[-1]
    assert not started
    await relay.close()


async def test_settings_reset_with_a_refused_value_changes_nothing(tmp_path: Path) -> None:
    app = stand_in_app(tmp_path / "bot.db", StandInEditor(defaults=EditSettings()))
    try:
        service = app.service
        bot = EditBot(_NoService(), DiscordConfig(), OpsConfig())  # type: ignore[arg-type]
        cog = EditCommands(bot, bot.relay, service, bot.preferences, True)
        interaction = _FakeInteraction()
        place = channel_place(1, 3)
        await service.update_channel_settings(place, steps=7)
        with pytest.raises(Rejected, match="template"):
            await cog.settings_defaults.callback(cog, interaction, reset=True, template="no-such")  # type: ignore[arg-type]
        assert service.channel_settings(place).steps == 7
        await cog.settings_defaults.callback(cog, interaction, reset=True, strength=1.5)  # type: ignore[arg-type]
        assert service.channel_settings(place).steps == EditSettings().steps
        assert service.channel_settings(place).direction_strength == 1.5
        await bot.close()
    finally:
        app.close()


async def test_the_instruction_modal_stays_within_discords_text_input_limit() -> None:
    modal = InstructionModal(None, 10_000)  # type: ignore[arg-type]
    assert modal.instruction.max_length == 4000


async def test_fitting_a_large_result_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    fit = render.fit_image

    def recording_fit(png: bytes, limit: int, stem: str) -> render.FittedImage:
        threads.append(threading.current_thread().name)
        return fit(png, limit, stem)

    monkeypatch.setattr(render, "fit_image", recording_fit)
    png = noise_png((64, 64))
    assert (await delivery.fit_image(png, len(png), "s")).data == png
    assert (await delivery.fit_image(png, len(png) - 1, "s")).filename == "s.webp"
    assert threads[0] == threading.main_thread().name
    assert threads[1] != threading.main_thread().name


async def test_history_of_a_result_still_being_linked_waits_for_it() -> None:
    """A quick /history (or menu) on a result the bot has just posted finds it, not "not a result"."""
    links: dict[int, Version] = {}

    async def contact_sheet(version_id: str, place: Place) -> bytes:
        return noise_png((8, 8))

    service = SimpleNamespace(
        version_for_message=lambda transport, message_id: links.get(int(message_id)),
        history=lambda version_id, place: [version()],
        contact_sheet=contact_sheet,
    )
    relay = _relay(service)
    interaction = _FakeInteraction()

    async def post_and_link() -> None:
        async with relay._links.posting_in(interaction.channel_id):
            await asyncio.sleep(0.1)
            links[555555555555555555] = version()

    posting = asyncio.create_task(post_and_link())
    await asyncio.sleep(0)
    await relay.history(interaction, "555555555555555555")  # type: ignore[arg-type]
    await posting
    assert interaction.sent == ["(thinking)"], "deferred before waiting for the link"
    assert interaction.edits[-1].startswith("🧬 History of this image (1 version)")


async def test_forged_events_pointing_into_another_server_reach_nothing(tmp_path: Path) -> None:
    """A /history link, a button and a Cancel from server 1 on things of server 99: all refused."""
    app = stand_in_app(tmp_path / "bot.db", StandInEditor())
    service = app.service
    await service.start()
    try:
        elsewhere = channel_place(99, 4)
        ticket = await service.start_edit(elsewhere, Author("7", "Eve"), noise_png((16, 16)), "make it red")
        made = await ticket.result()
        await service.link_message("discord", 555555555555555555, made.id)
        relay = _relay(service)
        interaction = _FakeInteraction()  # server 1, a moderator there
        interaction.permissions = discord.Permissions(manage_messages=True)
        with pytest.raises(NotAllowed, match="another server"):
            await relay.history(interaction, "555555555555555555")  # type: ignore[arg-type]
        for action in ("captions", "undo", "retry", "stronger", "subtler"):
            with pytest.raises(NotAllowed, match="another server"):
                await relay.button(_FakeInteraction(), action, made.id)  # type: ignore[arg-type]
        editor_job = await service.continue_edit(made.id, Author("7", "Eve"), "add a hat", place=elsewhere)
        with pytest.raises(NotAllowed, match="Only the person who asked"):
            await relay.cancel(interaction, editor_job.job_id)  # type: ignore[arg-type]
        await editor_job.result()
        assert interaction.edits == []
        await relay.close()
    finally:
        await service.stop()
        app.close()


@pytest.mark.parametrize("status_reachable", [True, False], ids=["told", "not-told"])
@pytest.mark.parametrize("download_works", [True, False], ids=["refused", "not-downloaded"])
async def test_an_upload_is_dropped_only_once_its_sender_was_told_why_it_ends(
    status_reachable: bool, download_works: bool
) -> None:
    """Else the next start takes the upload up again (and tells them then)."""
    dropped: list[str] = []

    class Outbox:
        async def record_upload(self, upload_id: str, *args: Any, **kwargs: Any) -> Any:
            return SimpleNamespace(id=upload_id)

        async def drop_upload(self, upload_id: str) -> None:
            dropped.append(upload_id)

    async def start_edit(*args: Any, **kwargs: Any) -> Any:
        raise Rejected("The queue is full.")

    async def get_from_cdn(url: str) -> bytes:
        if not download_works:
            raise aiohttp.ServerDisconnectedError()
        return b"an image"

    relay = _relay(SimpleNamespace(outbox=Outbox(), start_edit=start_edit))
    relay._bot.http = SimpleNamespace(get_from_cdn=get_from_cdn)  # type: ignore[attr-defined]
    status = RecordingStatus(fail=not status_reachable)
    received = delivery.Received(Author("5", "Bob"), "go", status, Destination(3, 1, 9, 1), "u1")  # type: ignore[arg-type]
    await relay._start(received, channel_place(1, 3), "http://cdn/x.png")
    assert status.edits[-1][0].startswith("⚠️")
    assert dropped == (["u1"] if status_reachable else [])
    await relay.close()


async def test_cancel_answers_the_click_before_waiting_for_the_service() -> None:
    """Behind queued image writes the service's answer can come after Discord's 3 s deadline."""
    interaction = _FakeInteraction()
    asked: list[list[str]] = []
    writer_free = asyncio.Event()

    async def cancel(job_id: str, by: Author, *, place: Place) -> bool:
        asked.append(list(interaction.sent))
        await writer_free.wait()
        return True

    relay = _relay(SimpleNamespace(cancel=cancel))
    cancelling = asyncio.create_task(relay.cancel(interaction, "j1"))  # type: ignore[arg-type]
    await until(lambda: bool(asked))
    assert asked == [["(thinking)"]], "the click was answered before the service was asked"
    writer_free.set()
    await cancelling
    assert interaction.edits == ["Cancelling that edit…"]
    await relay.close()


@pytest.mark.parametrize(
    ("asked_in", "target_in"), [(1, 99), (None, 99), (1, None)], ids=["server", "dm", "to-dm"]
)
async def test_the_edit_image_menu_on_a_message_of_another_place_is_refused_and_reaches_nothing(
    asked_in: int | None, target_in: int | None
) -> None:
    interaction = _FakeInteraction()
    interaction.guild_id = asked_in  # type: ignore[assignment]
    modals: list[Any] = []

    async def send_modal(modal: Any) -> None:
        modals.append(modal)

    interaction.response.send_modal = send_modal
    picture = SimpleNamespace(url="http://cdn/x.png", size=100, content_type="image/png", filename="x.png")
    target = SimpleNamespace(
        id=8,
        guild=None if target_in is None else SimpleNamespace(id=target_in),
        author=SimpleNamespace(id=7),
        channel=SimpleNamespace(id=4),
        attachments=[picture],
    )
    relay = _relay(SimpleNamespace())  # a service without a single method: nothing may reach it
    with pytest.raises(BadRequest) as refused:
        await relay.open_modal(interaction, target)  # type: ignore[arg-type]
    assert user_message(refused.value) == ANOTHER_SERVER  # what the person is told, privately
    assert modals == []
    assert interaction.sent == []
    await relay.close()


async def test_an_error_of_any_length_reaches_the_user_within_discords_limit() -> None:
    """A 2500-character error used to be refused by Discord, and the person heard nothing."""
    replies: list[str] = []
    message = _message("", replies=replies)
    await report(message, BadRequest("x" * 2500))
    [text] = replies
    assert len(text) == render.MAX_CONTENT
    assert text.startswith("⚠️ xxx")
    assert text.endswith("…")
    long_note = render.with_note("z" * 2500, "sent as WebP to fit the 8 KB upload limit")
    assert len(long_note) <= render.MAX_CONTENT
    assert long_note.endswith("\n-# sent as WebP to fit the 8 KB upload limit"), "the note survives the cut"


def test_zero_width_and_look_alike_instructions_are_read_as_what_they_show() -> None:
    check = InstructionFilter(["forbidden"], []).check

    def instruction_of(text: str) -> str:
        return intake.instruction_of(text, InstructionFilter(["forbidden"], []), lambda t: t.strip())

    for invisible in ("\u200b\u200c\u200d", "\ufeff \u2060", "\u3164"):
        with pytest.raises(BadRequest, match="What should I change"):
            instruction_of(invisible)
    for disguised in (
        "make it for\u200bbidden",
        "make it ｆｏｒｂｉｄｄｅｎ",
        "make it fоrbіdden",
        "FÖRBIDDEN",
    ):
        with pytest.raises(BadRequest, match="moderators have blocked"):
            check(normalise_instruction(disguised))
    check(normalise_instruction("make it snowy"))


async def test_without_a_safety_checker_switching_it_on_says_there_is_none() -> None:
    config = AppConfig.from_mapping({"discord": {"safety_model": ""}}).discord
    bot = EditBot(_NoService(), config, OpsConfig())  # type: ignore[arg-type]
    cog = EditCommands(bot, bot.relay, bot.service, bot.preferences, True)
    interaction = _FakeInteraction()
    with pytest.raises(BadRequest, match="no safety checker"):
        await cog.settings_safety.callback(cog, interaction, enabled=True)  # type: ignore[arg-type]
    assert interaction.sent == []
    await bot.close()


async def test_a_preview_rides_on_the_status_edits_once_per_change_and_goes_at_the_end() -> None:
    sent: list[list[bytes] | None] = []

    class WithFiles(RecordingStatus):
        async def edit(
            self, content: str, view: discord.ui.View | None, attachments: list[discord.File] | None = None
        ) -> None:
            await super().edit(content, view)
            sent.append(None if attachments is None else [file.fp.read() for file in attachments])

    status = WithFiles()
    board = StatusBoard(interval_s=0.0)
    for count, (text, preview) in enumerate(
        (("a", None), ("b", b"png-1"), ("c", b"png-1"), ("c", b"png-2")), 1
    ):
        board.show(status, text, None, preview)
        await until(lambda count=count: len(sent) == count)
    await board.finish(status, "done")
    assert sent == [None, [b"png-1"], None, [b"png-2"], []]
    await board.close()
