"""The conversation service on a real SQLite file, through the real EditWorker.

The engine is replaced at the edge by ``StandInEditor`` (tests/support/editor.py), which counts
the BLIP captions and inversions the real engine would have computed; the parts around it are
composed as ``bot.py`` composes them.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from editor.types import EditRequest
from sessions import (
    App,
    Author,
    EditCancelled,
    EditService,
    JobFailed,
    NotAllowed,
    NotFound,
    NothingToUndo,
    Place,
    Postponed,
    Rejected,
    Ticket,
    UserError,
    Version,
    queries,
)
from sessions.store import Store
from tests.support.db_checks import database_problems
from tests.support.editor import DEFAULTS, StandInEditor, stand_in_app

ANN = Author("1", "Ann")
BOB = Author("2", "Bob")
MOD = Author("3", "Mo", is_moderator=True)
PLACE = Place("discord", 10, 20)


def picture(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def editor() -> StandInEditor:
    return StandInEditor()


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Apps on one database file around stand-in editors (a fresh one unless given), closed at the end."""
    apps: list[App] = []

    def make(editor: StandInEditor | None = None, *, per_user_cap: int = 3) -> App:
        app = stand_in_app(tmp_path / "bot.db", editor or StandInEditor(), per_user_cap=per_user_cap)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., App], editor: StandInEditor) -> App:
    return make_app(editor)


@pytest.fixture
def store(app: App) -> Store:
    return app.store


@pytest.fixture
def earlier(app: App) -> Iterator[Store]:
    """The database as an earlier bot process left it: written through a connection of its own."""
    store = Store.open(app.config.storage.database_path)
    yield store
    store.close()


@pytest.fixture
async def service(app: App) -> AsyncIterator[EditService]:
    await app.service.start()
    yield app.service
    await app.service.stop()


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll state that lives in the database or another thread (nothing to await there)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out waiting")


async def finished(ticket: Awaitable[Ticket]) -> Version:
    """The version a request makes, once it is queued and done."""
    return await (await ticket).result()


async def first_version(service: EditService, instruction: str = "make it snowy") -> Version:
    return await finished(service.start_edit(PLACE, ANN, picture(), instruction))


async def test_a_conversation_starts_continues_undoes_and_shows_its_history(service: EditService) -> None:
    ticket = await service.start_edit(
        PLACE, ANN, picture(), "  make   it snowy ", reply_context={"channel": 20}
    )
    assert ticket.job.state == "queued"
    assert ticket.job.reply_context == {"channel": 20}
    states = [update.state async for update in ticket.progress()]
    first = await ticket.result()
    assert states[-1] == "done"
    assert "running" in states
    second = await finished(service.continue_edit(first.id, BOB, "add a red hat", place=PLACE))

    original = service.undo(first.id, place=PLACE)
    assert original.is_original
    assert (original.width, original.height) == (64, 48)  # what was posted, not what the engine edits
    assert first.instruction == "make it snowy"
    assert service.undo(second.id, place=PLACE) == service.get_version(first.id, place=PLACE)
    with pytest.raises(NothingToUndo, match="original"):
        service.undo(original.id, place=PLACE)
    history = service.history(second.id, place=PLACE)
    assert [v.id for v in history] == [original.id, first.id, second.id]
    assert [v.author_name for v in history] == ["Ann", "Ann", "Bob"]
    # How the input was seen:
    assert second.caption == service.get_version(first.id, place=PLACE).image_caption
    assert second.before_captions
    assert second.after_captions
    assert "add a red hat" in second.after_captions[0]
    sheet = Image.open(io.BytesIO(await service.contact_sheet(second.id, place=PLACE)))
    assert sheet.format == "PNG"
    assert 3 * 256 <= sheet.width <= 4 * 300
    assert 256 <= sheet.height <= 600
    assert Image.open(io.BytesIO(service.image_png(second.id, place=PLACE))).size == (32, 24)
    job = service.get_job(ticket.job_id)
    assert (job.state, job.result_version_id) == ("done", first.id)


async def test_simultaneous_continues_of_one_version_become_two_branches(
    service: EditService, editor: StandInEditor
) -> None:
    first = await first_version(service)
    editor.hold("add a hat", "add a scarf")
    ann = await service.continue_edit(first.id, ANN, "add a hat", place=PLACE)
    bob = await service.continue_edit(first.id, BOB, "add a scarf", place=PLACE)
    editor.release("add a hat")
    editor.release("add a scarf")
    left, right = await ann.result(), await bob.result()

    assert left.parent_id == right.parent_id == first.id
    assert left.id != right.id
    assert [v.instruction for v in service.conversation_versions(first.conversation_id)] == [
        None,
        "make it snowy",
        "add a hat",
        "add a scarf",
    ]
    assert service.image_png(left.id, place=PLACE) != service.image_png(right.id, place=PLACE)


async def test_retry_stronger_subtler_and_a_second_branch_reuse_the_inversion_and_caption(
    service: EditService, editor: StandInEditor
) -> None:
    first = await first_version(service)
    second = await finished(service.continue_edit(first.id, ANN, "add a red hat", place=PLACE))
    assert (editor.inversions, editor.captions) == (2, 2)  # the original, then the first edit's image
    language_model_calls = editor.language_model_calls

    retried = await finished(service.retry(second.id, BOB, place=PLACE))
    stronger = await finished(service.stronger(second.id, BOB, place=PLACE))
    subtler = await finished(service.subtler(second.id, ANN, place=PLACE))
    branch = await finished(service.continue_edit(first.id, BOB, "add a blue hat", place=PLACE))

    assert (editor.inversions, editor.captions) == (2, 2)
    assert {v.parent_id for v in (retried, stronger, subtler)} == {first.id}
    assert branch.parent_id == first.id
    assert retried.instruction == stronger.instruction == "add a red hat"
    assert retried.seed != second.seed
    assert stronger.seed == subtler.seed == second.seed
    assert stronger.after_captions == subtler.after_captions == second.after_captions
    assert stronger.settings == second.settings.scaled(1.5)
    assert subtler.settings == second.settings.scaled(1 / 1.5)
    assert editor.language_model_calls == language_model_calls + 2  # retry and the branch only


async def test_retry_of_the_original_is_explained(service: EditService) -> None:
    original = service.undo((await first_version(service)).id, place=PLACE)
    for action in (service.retry, service.stronger, service.subtler):
        with pytest.raises(UserError, match="original image"):
            await action(original.id, ANN, place=PLACE)


async def test_bad_input_is_refused_before_queueing_with_the_engines_message(
    service: EditService, store: Store
) -> None:
    with pytest.raises(Rejected, match="couldn't read that file"):
        await service.start_edit(PLACE, ANN, b"not an image", "make it snowy")
    with pytest.raises(Rejected, match="instruction is empty"):
        await service.start_edit(PLACE, ANN, picture(), "   ")
    with pytest.raises(Rejected, match="limit is"):
        await service.start_edit(PLACE, ANN, b"\x89PNG" + bytes(300_000), "make it snowy")
    first = await first_version(service)
    with pytest.raises(Rejected, match="under 81 characters"):
        await service.continue_edit(first.id, ANN, "x" * 200, place=PLACE)
    with pytest.raises(NotFound):
        await service.continue_edit("nope", ANN, "make it snowy", place=PLACE)
    assert store.job_counts() == {"done": 1}


async def test_the_worker_refusing_a_job_leaves_nothing_behind(
    make_app: Callable[..., App], editor: StandInEditor
) -> None:
    app = make_app(editor, per_user_cap=1)
    store, service = app.store, app.service
    await service.start()
    try:
        editor.hold("make it snowy")
        held = await service.start_edit(PLACE, ANN, picture(), "make it snowy")
        with pytest.raises(Rejected, match="already have 1 edit"):
            await service.start_edit(PLACE, ANN, picture(), "make it rainy")
        assert store.job_counts() in ({"queued": 1}, {"running": 1})
        assert store.db.execute("SELECT count(*) FROM conversations").fetchone()[0] == 1
        editor.release("make it snowy")
        await held.result()
    finally:
        await service.stop()


async def test_a_failed_edit_records_a_readable_error(service: EditService, editor: StandInEditor) -> None:
    editor.failures["make it explode"] = RuntimeError("CUDA error: device-side assert")
    ticket = await service.start_edit(PLACE, ANN, picture(), "make it explode")
    with pytest.raises(JobFailed, match="Something went wrong") as failure:
        await ticket.result()
    assert "CUDA" not in str(failure.value)
    job = service.get_job(ticket.job_id)
    assert job.state == "failed"
    assert job.error == str(failure.value)
    assert job.finished_at is not None


@pytest.mark.parametrize("ending", ["failed", "cancelled", "postponed"])
async def test_a_job_whose_ending_cannot_be_saved_still_ends_for_its_requester(
    service: EditService, editor: StandInEditor, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A failed write of how a job ended reaches the requester as a failure, never as a
    result() that waits forever (and a status that never finishes)."""

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(Store, "requeue" if ending == "postponed" else "finish_job", locked)
    editor.failures["make it explode"] = RuntimeError("CUDA error: device-side assert")
    editor.hold("make it snowy")
    instruction = "make it explode" if ending == "failed" else "make it snowy"
    ticket = await service.start_edit(PLACE, ANN, picture(), instruction)
    if ending != "failed":
        await wait_for(lambda: service.get_job(ticket.job_id).state == "running")
    if ending == "cancelled":
        assert await service.cancel(ticket.job_id, ANN, place=PLACE)
    if ending == "postponed":
        await service.stop()
    with pytest.raises(JobFailed, match="Something went wrong while saving"):
        await ticket.result()


async def test_cancels_touch_only_their_own_job_and_strangers_may_not_cancel(
    service: EditService, editor: StandInEditor
) -> None:
    first = await first_version(service)
    editor.hold("add a hat", "add a scarf")
    running = await service.continue_edit(first.id, ANN, "add a hat", place=PLACE)
    await wait_for(lambda: service.get_job(running.job_id).state == "running")
    waiting = await service.continue_edit(first.id, BOB, "add a scarf", place=PLACE)

    with pytest.raises(NotAllowed, match="Only the person who asked"):
        await service.cancel(waiting.job_id, ANN, place=PLACE)
    assert await service.cancel(waiting.job_id, BOB, place=PLACE)
    with pytest.raises(EditCancelled):
        await waiting.result()
    assert service.get_job(running.job_id).state == "running"
    assert await service.cancel(running.job_id, MOD, place=PLACE)  # a moderator may cancel anyone's
    with pytest.raises(EditCancelled):
        await running.result()
    assert service.get_job(running.job_id).state == "cancelled"
    assert service.get_job(waiting.job_id).state == "cancelled"
    assert not await service.cancel(waiting.job_id, BOB, place=PLACE)  # already over
    with pytest.raises(NotFound):
        await service.cancel("nope", BOB, place=PLACE)
    assert [v.id for v in service.conversation_versions(first.conversation_id)][-1] == first.id


async def test_results_of_one_conversation_are_recorded_in_the_order_asked(
    service: EditService, editor: StandInEditor
) -> None:
    first = await first_version(service)
    other = await first_version(service, "make it rainy")  # another conversation
    editor.hold("elsewhere", "add a hat")
    busy = await service.continue_edit(other.id, ANN, "elsewhere", place=PLACE)
    await wait_for(lambda: editor.started == ["make it snowy", "make it rainy", "elsewhere"])
    asked_first = await service.continue_edit(
        first.id, ANN, "add a hat", place=PLACE
    )  # Ann's second job: next round
    asked_second = await service.continue_edit(
        first.id, BOB, "add a scarf", place=PLACE
    )  # Bob's first: runs earlier
    editor.release("elsewhere")
    await busy.result()
    states = [update.state async for update in asked_second.progress()]  # to the worker's "done"
    await asyncio.sleep(0.05)
    assert states[-1] == "done"
    assert service.get_job(asked_second.job_id).result_version_id is None  # edited, waiting its turn
    editor.release("add a hat")
    hat, scarf = await asyncio.gather(asked_first.result(), asked_second.result())

    assert editor.started[-2:] == ["add a scarf", "add a hat"]  # ran out of order ...
    versions = service.conversation_versions(first.conversation_id)
    assert [v.id for v in versions][-2:] == [hat.id, scarf.id]  # ... recorded in order
    assert hat.created_at <= scarf.created_at


async def test_channel_settings_override_the_defaults_and_are_checked(service: EditService) -> None:
    assert service.channel_settings(PLACE) == DEFAULTS
    updated = await service.update_channel_settings(PLACE, steps=8, guidance_scale=7.5)
    assert (updated.steps, updated.guidance_scale) == (8, 7.5)
    first = await first_version(service)
    assert first.settings == updated
    assert (await service.update_channel_settings(PLACE, steps=None)).steps == DEFAULTS.steps
    with pytest.raises(Rejected, match="between 1 and 200"):
        await service.update_channel_settings(PLACE, steps=0)
    with pytest.raises(Rejected, match="Unknown setting"):
        await service.update_channel_settings(PLACE, colour="red")
    with pytest.raises(Rejected, match="Unknown prompt template"):
        await service.update_channel_settings(PLACE, template="haiku")
    assert service.channel_settings(Place("discord", 10, 21)) == DEFAULTS
    assert await service.update_channel_options(PLACE, edit_channel=True) == {"edit_channel": True}
    assert service.channel_options(PLACE) == {"edit_channel": True}


async def test_a_thread_inherits_its_channel_settings_and_may_override_them(service: EditService) -> None:
    thread = Place(PLACE.transport, PLACE.guild_id, PLACE.channel_id, "77")
    await service.update_channel_settings(PLACE, steps=9, guidance_scale=6.0)
    assert (service.channel_settings(thread).steps, service.channel_settings(thread).guidance_scale) == (
        9,
        6.0,
    )
    await service.update_channel_settings(thread, steps=12)
    assert (service.channel_settings(thread).steps, service.channel_settings(thread).guidance_scale) == (
        12,
        6.0,
    )
    assert service.channel_settings(PLACE).steps == 9
    assert (await service.update_channel_settings(thread, steps=None)).steps == 9  # back to the channel's


async def test_messages_lead_back_to_their_versions_and_stats_add_up(service: EditService) -> None:
    first = await first_version(service)
    await service.link_message("discord", 555, first.id)
    assert service.version_for_message("discord", "555") == first
    assert service.version_for_message("discord", 556) is None
    with pytest.raises(NotFound):
        await service.link_message("discord", 557, "nope")
    stats = service.stats()
    assert stats["queue_depth"] == 0
    assert stats["jobs"] == {"done": 1}
    assert stats["inversion_cache_bytes"] > 0  # the original's inversion


async def test_stop_keeps_unfinished_jobs_queued_and_start_takes_them_up(
    app: App, editor: StandInEditor, make_app: Callable[..., App]
) -> None:
    store, service = app.store, app.service
    await service.start()
    first = await first_version(service)
    editor.hold("add a hat")
    running = await service.continue_edit(first.id, ANN, "add a hat", place=PLACE)
    await wait_for(lambda: service.get_job(running.job_id).state == "running")
    waiting = await service.continue_edit(first.id, BOB, "add a scarf", place=PLACE)
    await service.stop()
    for ticket in (running, waiting):
        with pytest.raises(Postponed, match="saved"):
            await ticket.result()
        job = store.get_job(ticket.job_id)
        assert (job.state, job.attempts) == ("queued", 0)

    recovered: list[Ticket] = []

    async def listener(ticket: Ticket) -> None:
        recovered.append(ticket)

    app.close()  # the process ends; the next one opens the database again
    restarted = make_app()
    again = restarted.service
    again.add_listener(listener)
    await again.start()
    try:
        # The first edit was done but never delivered, and asked for with no reply context:
        # nobody can be told, so it is given up once instead of coming back at every start.
        assert restarted.store.undelivered_jobs() == []
        unfinished = recovered
        assert {t.job_id for t in unfinished} == {running.job_id, waiting.job_id}
        assert unfinished[0].job.reply_context == {}
        results = [await t.result() for t in unfinished]
        assert {v.instruction for v in results} == {"add a hat", "add a scarf"}
        assert restarted.store.job_counts() == {"done": 3}
    finally:
        await again.stop()


async def test_a_job_crashed_in_twice_is_reported_interrupted(app: App, earlier: Store) -> None:
    store = app.store
    job = earlier.add_job(
        kind="start",
        place=PLACE,
        requester=ANN,
        instruction="make it snowy",
        settings=DEFAULTS,
        seed=1,
        input_png=picture((32, 24)),
        input_size=(32, 24),
        reply_context={"message": 9},
    )
    earlier.mark_running(job.id)
    earlier.requeue(job.id, refund_attempt=False)  # the first crash, taken up again
    earlier.mark_running(job.id)  # ... and the second crash
    recovered: list[Ticket] = []

    async def listener(ticket: Ticket) -> None:
        recovered.append(ticket)

    service = app.service
    service.add_listener(listener)
    await service.start()
    try:
        [ticket] = recovered
        assert ticket.job.reply_context == {"message": 9}
        assert [update async for update in ticket.progress()] == []
        with pytest.raises(JobFailed, match="restarted twice"):
            await ticket.result()
        assert store.get_job(job.id).state == "interrupted"
    finally:
        await service.stop()


async def test_an_unreadable_leftover_job_fails_alone_and_the_bot_still_starts(
    app: App, earlier: Store
) -> None:
    store = app.store

    def leftover(instruction: str) -> str:
        return earlier.add_job(
            kind="start",
            place=PLACE,
            requester=ANN,
            instruction=instruction,
            settings=DEFAULTS,
            seed=1,
            input_png=picture((32, 24)),
            input_size=(32, 24),
            reply_context={},
        ).id

    broken, fine = leftover("make it snowy"), leftover("add a hat")
    # Settings written by an older version of the bot, with a setting that no longer exists.
    earlier.db.execute('UPDATE jobs SET settings = \'{"steps": 4, "retired": 1}\' WHERE id = ?', [broken])
    recovered: dict[str, Ticket] = {}

    async def listener(ticket: Ticket) -> None:
        recovered[ticket.job_id] = ticket

    service = app.service
    service.add_listener(listener)
    await service.start()
    try:
        with pytest.raises(JobFailed, match="Something went wrong"):
            await recovered[broken].result()
        assert store.get_job(broken).state == "failed"
        assert (await recovered[fine].result()).instruction == "add a hat"
    finally:
        await service.stop()


@st.composite
def tree_actions(draw: st.DrawFn) -> list[tuple[str, int]]:
    """("start" | "continue" | "undo-continue", which earlier version) sequences."""
    count = draw(st.integers(min_value=1, max_value=8))
    kinds = st.sampled_from(["start", "continue", "continue", "undo-continue"])
    return [("start", 0)] + [(draw(kinds), draw(st.integers(0, 50))) for _ in range(count)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=tree_actions())
def test_any_sequence_of_edits_keeps_a_tree_whose_histories_end_at_their_root(
    actions: list[tuple[str, int]],
) -> None:
    async def scenario(folder: Path) -> None:
        app = stand_in_app(folder / "bot.db", StandInEditor(), per_user_cap=50)
        store, service = app.store, app.service
        await service.start()
        try:
            made: list[Version] = []
            for kind, pick in actions:
                if kind == "start" or not made:
                    made.append(await finished(service.start_edit(PLACE, ANN, picture(), "begin")))
                    continue
                source = made[pick % len(made)]
                if kind == "undo-continue" and not source.is_original:
                    source = service.undo(source.id, place=PLACE)
                made.append(
                    await finished(service.continue_edit(source.id, BOB, f"step {len(made)}", place=PLACE))
                )
            every = made + [service.undo(v.id, place=PLACE) for v in made if v.parent_id is not None]
            for version in every:
                lineage = service.history(version.id, place=PLACE)
                assert lineage[0].parent_id is None
                assert lineage[-1].id == version.id
                assert len({v.id for v in lineage}) == len(lineage)  # acyclic
                for parent, child in itertools.pairwise(lineage):
                    assert child.parent_id == parent.id
                    assert child.conversation_id == parent.conversation_id
            assert database_problems(store) == []
        finally:
            await service.stop()
            app.close()

    with tempfile.TemporaryDirectory() as folder:  # a fresh database for every example
        asyncio.run(scenario(Path(folder)))


async def test_a_long_history_shows_the_original_and_the_latest_steps(
    service: EditService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sessions.queries.CONTACT_SHEET_LIMIT", 3)
    version = await first_version(service)
    short = Image.open(io.BytesIO(await service.contact_sheet(version.id, place=PLACE)))
    for step in range(3):
        version = await finished(
            service.continue_edit(version.id, BOB, f"step {step} " + "word " * 12, place=PLACE)
        )
    long = Image.open(io.BytesIO(await service.contact_sheet(version.id, place=PLACE)))

    assert len(service.history(version.id, place=PLACE)) == 5
    assert long.height == short.height  # one row: three cells of five steps
    assert long.width == short.width * 3 // 2  # two cells, then three


# --- servers are walls --------------------------------------------------------------------------

ELSEWHERE = Place("discord", 11, 20)  # another server
DM_ANN, DM_BOB = Place("discord", None, 70), Place("discord", None, 71)  # two private chats


async def test_a_version_is_used_only_from_its_own_server_or_chat(service: EditService) -> None:
    """Forged events (a click, a reply, a menu pointing into another server) reach nothing."""
    first = await first_version(service)
    uses = [
        lambda: service.get_version(first.id, place=ELSEWHERE),
        lambda: service.undo(first.id, place=ELSEWHERE),
        lambda: service.history(first.id, place=ELSEWHERE),
        lambda: service.image_png(first.id, place=ELSEWHERE),
    ]
    for use in uses:
        with pytest.raises(NotAllowed, match="another server or a private chat"):
            use()
    requests = [
        service.continue_edit(first.id, BOB, "add a hat", place=ELSEWHERE),
        service.retry(first.id, BOB, place=ELSEWHERE),
        service.stronger(first.id, BOB, place=ELSEWHERE),
        service.subtler(first.id, BOB, place=ELSEWHERE),
        service.contact_sheet(first.id, place=ELSEWHERE),
    ]
    for request in requests:
        with pytest.raises(NotAllowed, match="another server"):
            await request
    in_a_thread = Place("discord", PLACE.guild_id, 99, 5)  # same server, another channel: fine
    assert service.get_version(first.id, place=in_a_thread) == first

    private = await finished(service.start_edit(DM_ANN, ANN, picture(), "make it teal"))
    assert service.get_version(private.id, place=DM_ANN) == private
    for elsewhere in (DM_BOB, PLACE):
        with pytest.raises(NotAllowed):
            service.get_version(private.id, place=elsewhere)
    assert service.stats()["jobs"] == {"done": 2}  # nothing was queued from the wrong place


async def test_moderators_cancel_only_in_the_server_they_moderate(
    service: EditService, editor: StandInEditor
) -> None:
    first = await first_version(service)
    editor.hold("add a hat")
    ticket = await service.continue_edit(first.id, ANN, "add a hat", place=PLACE)
    with pytest.raises(NotAllowed, match="Only the person who asked"):
        await service.cancel(ticket.job_id, MOD, place=ELSEWHERE)  # a moderator of server 11
    assert await service.cancel(ticket.job_id, ANN, place=ELSEWHERE)  # the requester, anywhere
    with pytest.raises(EditCancelled):
        await ticket.result()


# --- nothing heavy on the loop ------------------------------------------------------------------


async def test_caps_are_checked_before_the_image_is_decoded(
    make_app: Callable[..., App], editor: StandInEditor, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(editor, per_user_cap=1)
    service = app.service
    decoded_on: list[str] = []
    check_inputs = editor.check_inputs

    def recording(request: EditRequest) -> Any:
        decoded_on.append(threading.current_thread().name)
        return check_inputs(request)

    monkeypatch.setattr(editor, "check_inputs", recording)
    await service.start()
    try:
        editor.hold("make it snowy")
        held = await service.start_edit(PLACE, ANN, picture(), "make it snowy")
        assert decoded_on
        assert threading.main_thread().name not in decoded_on
        decoded = len(decoded_on)
        with pytest.raises(Rejected, match="already have 1 edit"):
            await service.start_edit(PLACE, ANN, b"never decoded", "make it rainy")
        service.check_admission(BOB)
        with pytest.raises(Rejected, match="already have 1 edit"):
            service.check_admission(ANN)
        assert len(decoded_on) == decoded
        editor.release("make it snowy")
        await held.result()
    finally:
        await service.stop()


async def test_a_jobs_writes_and_its_images_are_made_on_the_writer_thread(
    app: App, service: EditService, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, str] = {}
    for name in ("add_job", "mark_running", "record_result"):
        real = getattr(Store, name)

        def recording(store: Store, *args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
            threads[_name] = threading.current_thread().name
            return _real(store, *args, **kwargs)

        monkeypatch.setattr(Store, name, recording)
    first = await first_version(service)
    assert threads == dict.fromkeys(("add_job", "mark_running", "record_result"), "store-writer")
    assert service.get_version(first.id, place=PLACE) == first  # a read after the write sees it


async def test_links_place_choices_and_deletes_are_written_on_the_writer_thread(
    service: EditService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """None of them may wait on the loop for the lock while the writer records a result."""
    first = await first_version(service)
    second = await finished(service.continue_edit(first.id, ANN, "add a hat", place=PLACE))
    threads: dict[str, set[str]] = {}
    for name in ("link_message", "update_place", "mark_deleted"):
        real = getattr(Store, name)

        def recording(store: Store, *args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
            threads.setdefault(_name, set()).add(threading.current_thread().name)
            return _real(store, *args, **kwargs)

        monkeypatch.setattr(Store, name, recording)
    await service.link_message("discord", 555, second.id)
    await service.update_channel_settings(PLACE, steps=8)
    await service.update_channel_options(PLACE, edit_channel=True)
    await service.update_channel_policy(PLACE, chain="compose")
    await service.delete_version(second.id, ANN, place=PLACE)
    assert threads == {name: {"store-writer"} for name in ("link_message", "update_place", "mark_deleted")}
    # Each read after its write sees it.
    assert service.version_for_message("discord", 555) == service.get_version(second.id, place=PLACE)
    assert service.get_version(second.id, place=PLACE).is_deleted
    assert service.channel_settings(PLACE).steps == 8
    assert service.channel_options(PLACE)["edit_channel"] is True
    assert service.channel_policy(PLACE).chain == "compose"


async def test_a_contact_sheet_reads_and_draws_its_images_off_the_event_loop(
    app: App, service: EditService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to 40 full-size images: read on a thread of their own, never on the loop's connection."""
    first = await first_version(service)
    second = await finished(service.continue_edit(first.id, ANN, "add a hat", place=PLACE))
    reads: list[tuple[str, Store]] = []
    drawn_on: list[str] = []
    read_image, draw = Store.image_png, queries.draw_lineage

    def reading(store: Store, version_id: str) -> bytes | None:
        reads.append((threading.current_thread().name, store))
        return read_image(store, version_id)

    def drawing(*args: Any) -> bytes:
        drawn_on.append(threading.current_thread().name)
        return draw(*args)

    monkeypatch.setattr(Store, "image_png", reading)
    monkeypatch.setattr(queries, "draw_lineage", drawing)
    sheet = await service.contact_sheet(second.id, place=PLACE)
    assert Image.open(io.BytesIO(sheet)).format == "PNG"
    assert len(reads) == 3, "the original, the first edit and the second"
    [thread] = {thread for thread, _ in reads} | set(drawn_on)  # read and drawn in one go
    assert thread not in (threading.current_thread().name, "store-writer")
    assert all(store is not app.store for _, store in reads)


# --- the outbox -----------------------------------------------------------------------------------


async def test_a_result_recorded_but_not_delivered_is_handed_back_at_start(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    await app.service.start()
    delivered = await app.service.start_edit(PLACE, ANN, picture(), "make it snowy")
    await delivered.result()
    await app.service.outbox.mark_delivered(delivered.job_id)
    lost = await app.service.start_edit(PLACE, BOB, picture(), "make it rainy", reply_context={"m": 1})
    version = await lost.result()  # done; then the bot dies before posting it
    nobody = await app.service.start_edit(PLACE, ANN, picture(), "make it windy")  # no reply context
    await nobody.result()
    await app.service.stop()
    app.close()

    again = make_app()
    recovered: list[Ticket] = []

    async def listener(ticket: Ticket) -> None:
        recovered.append(ticket)

    again.service.add_listener(listener)
    await again.service.start()
    try:
        [ticket] = recovered
        assert (ticket.job_id, ticket.job.reply_context) == (lost.job_id, {"m": 1})
        assert again.service.get_job(nobody.job_id).delivered_at is not None, "nobody to tell: given up once"
        assert await ticket.result() == version
        assert not again.service.outbox.is_posted("discord", version.id)
        await again.service.link_message("discord", 42, version.id)
        assert again.service.outbox.is_posted("discord", version.id)
        await again.service.outbox.mark_delivered(ticket.job_id)
        assert again.store.undelivered_jobs() == []
    finally:
        await again.service.stop()


async def test_an_upload_is_recorded_before_its_download_and_taken_over_by_its_job(
    service: EditService, store: Store
) -> None:
    upload = await service.outbox.record_upload(
        service.new_job_id(),
        PLACE,
        ANN,
        "make it snowy",
        source="https://cdn.example/a.png",
        reply_context={},
    )
    assert service.outbox.pending_uploads() == [upload]
    with pytest.raises(Rejected):  # refused: the transport tells the person, then drops it
        await service.start_edit(PLACE, ANN, b"not an image", "make it snowy", upload_id=upload.id)
    assert service.outbox.pending_uploads() == [upload]
    ticket = await service.start_edit(PLACE, ANN, picture(), "make it snowy", upload_id=upload.id)
    assert ticket.job_id == upload.id, "the Cancel button shown while it downloaded names the job"
    assert service.outbox.pending_uploads() == []
    await ticket.result()
    other = await service.outbox.record_upload(
        "u2", PLACE, BOB, "add a hat", source="https://x", reply_context={}
    )
    await service.outbox.drop_upload(other.id)
    assert store.uploads.all() == []


async def test_an_upload_cancelled_while_it_downloads_never_becomes_a_job(service: EditService) -> None:
    upload = await service.outbox.record_upload(
        service.new_job_id(), PLACE, ANN, "make it snowy", source="https://x", reply_context={}
    )
    with pytest.raises(NotAllowed):
        await service.cancel(upload.id, BOB, place=PLACE)
    with pytest.raises(NotAllowed):
        await service.cancel(upload.id, MOD, place=ELSEWHERE)
    assert await service.cancel(upload.id, MOD, place=PLACE)
    with pytest.raises(EditCancelled):
        await service.start_edit(PLACE, ANN, picture(), "make it snowy", upload_id=upload.id)
    assert service.stats()["jobs"] == {}
    with pytest.raises(NotFound):
        await service.cancel(upload.id, ANN, place=PLACE)
