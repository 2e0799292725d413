"""Steering an edit through the service: fixed captions, deletes, and the migration they need.

The real store, worker and service around the stand-in editor (tests/support/editor.py),
which counts the language-model calls and inversions the engine would have made.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlite_utils import Database

from sessions import (
    App,
    Author,
    EditService,
    NotAllowed,
    NotFound,
    Place,
    Rejected,
    Ticket,
    UserError,
    Version,
)
from sessions import service as service_module
from sessions.policy import ChannelPolicy
from sessions.schema import MIGRATIONS
from sessions.store import Store
from sessions.variation_store import VariationStore
from tests.support.db_checks import database_problems
from tests.support.editor import StandInEditor, stand_in_app
from tests.test_service import picture

ANN = Author("1", "Ann")
BOB = Author("2", "Bob")
MOD = Author("3", "Mo", is_moderator=True)
PLACE = Place("discord", 10, 20)


async def finished(ticket: Awaitable[Ticket[Any]]) -> Any:
    """What a request makes, once it is queued and done."""
    return await (await ticket).result()


@pytest.fixture
def editor() -> StandInEditor:
    return StandInEditor()


@pytest.fixture
async def app(tmp_path: Path, editor: StandInEditor) -> AsyncIterator[App]:
    app = stand_in_app(tmp_path / "bot.db", editor)
    await app.service.start()
    yield app
    await app.service.stop()
    app.close()


@pytest.fixture
def service(app: App) -> EditService:
    return app.service


async def edited(service: EditService, instruction: str = "make it snowy") -> Version:
    return await finished(service.start_edit(PLACE, ANN, picture(), instruction))


def job_count(app: App) -> int:
    return int(app.store.db.execute("SELECT count(*) FROM jobs").fetchone()[0])


async def test_fixed_captions_redo_the_edit_from_the_parent_without_the_language_model(
    service: EditService, editor: StandInEditor
) -> None:
    first = await edited(service)
    calls, inversions = editor.language_model_calls, editor.inversions
    ticket = await service.fix_captions(
        first.id, BOB, ["  a  photo ", "", "a picture"], ["a snowy photo"], place=PLACE
    )
    fixed = await ticket.result()
    assert ticket.job.kind == "fix"
    assert fixed.parent_id == first.parent_id
    assert (fixed.before_captions, fixed.after_captions) == (("a photo", "a picture"), ("a snowy photo",))
    assert fixed.captions_by == "person"
    assert first.captions_by == "model"
    assert (fixed.instruction, fixed.seed, fixed.settings) == (first.instruction, first.seed, first.settings)
    assert editor.language_model_calls == calls, "no language-model call"
    assert editor.inversions == inversions, "the parent's cached inversion is reused"
    # The same captions pushed further are still the person's; a retry asks the model again.
    stronger = await finished(service.stronger(fixed.id, ANN, place=PLACE))
    assert stronger.captions_by == "person"
    assert stronger.after_captions == ("a snowy photo",)
    retried = await finished(service.retry(fixed.id, ANN, place=PLACE))
    assert retried.captions_by == "model"
    assert editor.language_model_calls == calls + 1


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        ([], ["a dog"], "at least one caption"),
        (["a cat", " "], ["", "\n"], "at least one caption"),
        (["a cat"], ["a dog " + "very " * 80], "too long"),
        (["a cat"], ["x" * 301], "too long"),
        (["a cat", "a kitten"], ["a  kitten", "a cat"], "the same"),
        (["a cat"] * 17, ["a dog"], "at most 16"),
    ],
)
async def test_bad_captions_are_refused_with_a_reason_and_nothing_is_queued(
    app: App, before: list[str], after: list[str], message: str
) -> None:
    service = app.service
    first = await edited(service)
    jobs = job_count(app)
    with pytest.raises(Rejected, match=message):
        await service.fix_captions(first.id, ANN, before, after, place=PLACE)
    assert job_count(app) == jobs


async def test_the_original_has_no_captions_to_fix(service: EditService) -> None:
    first = await edited(service)
    assert first.parent_id is not None
    with pytest.raises(Exception, match="original image, so there is no edit to fix"):
        await service.fix_captions(first.parent_id, ANN, ["a"], ["b"], place=PLACE)


def test_the_steering_migration_keeps_existing_jobs_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(str(path)))
    MIGRATIONS.apply(db, stop_before="m002_steering")
    db.execute("INSERT INTO conversations VALUES ('c1', 'k', 'console', NULL, 's', NULL, 1.0)")
    db.execute(
        "INSERT INTO jobs (id, conversation_id, requester_id, requester_name, kind, instruction, "
        "settings, seed, state, created_at) "
        "VALUES ('j1', 'c1', 'u', 'U', 'start', 'x', '{}', 1, 'queued', 2.0)"
    )
    db.conn.commit()
    db.close()
    store = Store.open(path)
    try:
        job = store.get_job("j1")
        assert job is not None
        assert job.kind == "start"
        assert job.state == "queued"
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert "variations" in store.db.table_names()
    finally:
        store.close()


async def test_delete_keeps_the_version_for_branches_but_not_in_history(service: EditService) -> None:
    first = await edited(service)
    second = await finished(service.continue_edit(first.id, BOB, "add a hat", place=PLACE))
    third = await finished(service.continue_edit(second.id, ANN, "at night", place=PLACE))
    with pytest.raises(NotAllowed):
        await service.delete_version(second.id, ANN, place=PLACE)
    assert (await service.delete_version(second.id, BOB, place=PLACE)).is_deleted
    assert (
        await service.delete_version(third.id, MOD, place=PLACE)
    ).is_deleted  # a moderator may delete anyone's
    assert service.history(first.id, place=PLACE)[-1] == service.get_version(first.id, place=PLACE)
    fourth = await finished(service.continue_edit(first.id, ANN, "in watercolor", place=PLACE))
    child = await finished(
        service.retry(third.id, ANN, place=PLACE)
    )  # a branch from the deleted version's child
    assert child.parent_id == second.id
    assert [v.id for v in service.history(child.id, place=PLACE)] == [first.parent_id, first.id, child.id]
    assert service.undo(child.id, place=PLACE).id == first.id  # past the deleted parent
    with pytest.raises(NotFound, match="deleted"):
        service.history(second.id, place=PLACE)
    assert fourth.id in {v.id for v in service.conversation_versions(first.conversation_id)}
    with pytest.raises(UserError, match="original"):
        await service.delete_version(first.parent_id or "", MOD, place=PLACE)


async def test_a_thread_inherits_the_channel_policy_and_bad_values_are_refused(service: EditService) -> None:
    thread = Place("discord", 10, 20, 30)
    assert service.channel_policy(thread) == ChannelPolicy()
    await service.update_channel_policy(PLACE, requester_only=True, chain="compose")
    await service.update_channel_policy(thread, previews=False)
    assert service.channel_policy(thread) == ChannelPolicy("compose", False, True)
    assert (await service.update_channel_policy(PLACE, chain=None)).chain == "reinvert"
    for bad in ({"chain": "sideways"}, {"previews": "yes"}, {"colour": True}):
        with pytest.raises(Rejected):
            await service.update_channel_policy(PLACE, **bad)


async def test_policy_changes_made_at_once_all_stay(service: EditService) -> None:
    await asyncio.gather(
        service.update_channel_policy(PLACE, requester_only=True),
        service.update_channel_policy(PLACE, chain="compose"),
        service.update_channel_policy(PLACE, previews=False),
    )
    assert service.channel_policy(PLACE) == ChannelPolicy("compose", False, True)


async def test_a_result_carries_its_provenance_as_png_text(service: EditService) -> None:
    version = await edited(service, "make it snowy ☃")
    with Image.open(io.BytesIO(service.image_png(version.id, place=PLACE))) as image:
        text = dict(image.text)
    assert text["Instruction"] == "make it snowy ☃"
    assert text["Seed"] == str(version.seed)
    assert json.loads(text["Before captions"]) == list(version.before_captions)
    assert json.loads(text["After captions"]) == list(version.after_captions)
    assert version.settings is not None
    assert json.loads(text["Settings"]) == version.settings.to_dict()
    assert json.loads(text["Models"]) == {"diffusion": "stand-in/tint"}
    assert text["Caption"] == version.caption


async def test_the_original_is_kept_as_posted_and_undo_shows_it(service: EditService) -> None:
    upload = picture((150, 100), (10, 200, 30))
    first = await finished(service.start_edit(PLACE, ANN, upload, "add a hat"))
    original = service.undo(first.id, place=PLACE)
    assert (original.width, original.height) == (150, 100)
    assert (first.width, first.height) == (32, 24)  # the engine's resolution
    with Image.open(io.BytesIO(service.image_png(original.id, place=PLACE))) as image:
        assert image.size == (150, 100)
        assert image.getpixel((75, 50)) == (10, 200, 30)
    again = await finished(service.continue_edit(original.id, BOB, "add a scarf", place=PLACE))
    assert (again.width, again.height) == (32, 24)


async def test_a_grid_of_variations_reads_and_draws_its_images_off_the_event_loop(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await finished(app.service.variations((await edited(app.service)).id, BOB, place=PLACE))
    threads: list[str] = []
    read_image, draw = VariationStore.image_png, service_module.draw_grid

    def reading(variations: VariationStore, job_id: str, number: int) -> bytes | None:
        threads.append(threading.current_thread().name)
        assert variations.db is not app.store.db, "a connection of its own"
        return read_image(variations, job_id, number)

    def drawing(pngs: list[bytes]) -> bytes:
        threads.append(threading.current_thread().name)
        return draw(pngs)

    monkeypatch.setattr(VariationStore, "image_png", reading)
    monkeypatch.setattr(service_module, "draw_grid", drawing)
    await app.service.variation_grid(made.job_id, place=PLACE)
    assert len(threads) == 5, "four images read, one grid drawn"
    [thread] = set(threads)  # read and drawn in one go
    assert thread not in (threading.current_thread().name, "store-writer")


async def test_variations_are_one_batch_on_the_parents_inversion_and_picking_makes_versions(
    app: App, editor: StandInEditor
) -> None:
    service = app.service
    first = await edited(service)
    assert first.settings is not None
    inversions, calls = editor.inversions, editor.language_model_calls
    made = await finished(service.variations(first.id, BOB, place=PLACE))
    assert editor.batches == [4]
    assert editor.inversions == inversions, "one inversion, the parent's, cached"
    assert editor.language_model_calls == calls + 4, "each alternative is its own sample"
    assert made.source_version_id == first.parent_id
    assert [v.number for v in made.variations] == [1, 2, 3, 4]
    assert len({v.seed for v in made.variations}) == 4
    base = first.settings.direction_strength
    assert [v.settings.direction_strength for v in made.variations] == [
        base,
        0.75 * base,
        1.25 * base,
        1.5 * base,
    ]
    for variation in made.variations:
        assert f"(seed {variation.seed})" in variation.after_captions[0]  # its own captions, kept
    with Image.open(io.BytesIO(await service.variation_grid(made.job_id, place=PLACE))) as grid:
        assert grid.size == (2 * 32, 2 * 24)

    third = await service.pick_variation(made.job_id, 3, ANN, place=PLACE)
    assert third.parent_id == first.parent_id
    assert third.after_captions == made.variations[2].after_captions
    assert third.settings == made.variations[2].settings
    assert service.image_png(third.id, place=PLACE) == service.variation_png(made.job_id, 3, place=PLACE)
    assert await service.pick_variation(made.job_id, 3, BOB, place=PLACE) == third, (
        "picked once, the same version after"
    )
    again = service.variation_set(made.job_id, place=PLACE)
    assert [v.version_id for v in again.variations] == [None, None, third.id, None]
    second = await service.pick_variation(made.job_id, 1, BOB, place=PLACE)
    assert second.id != third.id
    onwards = await finished(service.continue_edit(third.id, ANN, "add a hat", place=PLACE))
    assert onwards.parent_id == third.id
    assert database_problems(app.store) == []
    with pytest.raises(NotFound):
        await service.pick_variation(made.job_id, 5, ANN, place=PLACE)
    with pytest.raises(UserError, match="no edit to vary"):
        await service.variations(first.parent_id or "", ANN, place=PLACE)
