"""What the engine says about how it read an instruction reaches the person: kept with the
version (edits, variations, picks, restarts) and shown by Discord and the console."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image
from sqlite_utils import Database

from handlers.discord import render
from sessions import App, Author, EditSettings, Place, Version
from sessions.models import Variation, VariationSet
from sessions.schema import MIGRATIONS
from sessions.store import Store
from tests.support.editor import StandInEditor, stand_in_app
from tests.test_console import chat, write_picture
from tests.test_service import picture
from tests.test_steering import finished

ANN = Author("1", "Ann")
PLACE = Place("discord", 10, 20)
FALLBACK = "say it plainly"


@pytest.fixture
def editor() -> StandInEditor:
    editor = StandInEditor()
    editor.fallbacks.add(FALLBACK)
    return editor


@pytest.fixture
async def app(tmp_path: Path, editor: StandInEditor) -> AsyncIterator[App]:
    app = stand_in_app(tmp_path / "bot.db", editor)
    await app.service.start()
    yield app
    await app.service.stop()
    app.close()


async def test_a_fallback_edit_keeps_its_note_and_a_good_one_has_none(app: App, tmp_path: Path) -> None:
    fell_back = await finished(app.service.start_edit(PLACE, ANN, picture(), FALLBACK))
    assert len(fell_back.notes) == 1
    assert "fallback" in fell_back.notes[0]
    good = await finished(app.service.continue_edit(fell_back.id, ANN, "add a hat", place=PLACE))
    assert good.notes == ()
    with Image.open(io.BytesIO(app.service.image_png(fell_back.id, place=PLACE))) as image:
        assert image.text["Notes"] == fell_back.notes[0]  # in the PNG's provenance too

    reopened = Store.open(tmp_path / "bot.db")
    try:
        assert reopened.get_version(fell_back.id).notes == fell_back.notes  # survives a restart
    finally:
        reopened.close()


async def test_variations_carry_their_notes_into_the_version_picked(app: App) -> None:
    first = await finished(app.service.start_edit(PLACE, ANN, picture(), "add a hat"))
    source = app.service.undo(first.id, place=PLACE)
    fell_back = await finished(app.service.continue_edit(source.id, ANN, FALLBACK, place=PLACE))
    made = await finished(app.service.variations(fell_back.id, ANN, place=PLACE))
    assert all(v.notes == fell_back.notes for v in made.variations)
    picked = await app.service.pick_variation(made.job_id, 2, ANN, place=PLACE)
    assert picked.notes == fell_back.notes


def test_versions_made_before_notes_existed_have_none(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    connection = sqlite3.connect(path)
    old = Store(Database(connection), 10_000)
    MIGRATIONS.apply(old.db, stop_before="m004_caption_notes")
    old.db.execute("INSERT INTO conversations VALUES ('c', 'k', 'discord', '10', '20', NULL, 0)")
    old.db.execute(
        "INSERT INTO versions (id, conversation_id, author_id, author_name, width, height, "
        "created_at, image) VALUES ('v', 'c', '1', 'Ann', 8, 8, 0, x'00')"
    )
    connection.commit()
    connection.close()
    store = Store.open(path)
    try:
        assert store.get_version("v").notes == ()
    finally:
        store.close()


# --- how Discord and the console show them ----------------------------------------------------


def version(**changes: object) -> Version:
    values: dict[str, object] = {
        "id": "v1",
        "conversation_id": "c1",
        "parent_id": "v0",
        "author_id": "42",
        "author_name": "Alice",
        "instruction": "make it snowy",
        "caption": "a photo of a cat",
        "before_captions": ("a photo of a cat",),
        "after_captions": ("a photo of a cat, make it snowy",),
        "settings": None,
        "seed": 7,
        "width": 64,
        "height": 48,
        "created_at": 0.0,
        "notes": ("The language model gave no usable captions in 3 tries; the edit used the fallback.",),
    }
    values.update(changes)
    return Version(**values)  # type: ignore[arg-type]


def test_the_result_text_shows_each_note_as_small_print_before_the_upload_note() -> None:
    lines = render.result_text(version(), note="sent as WebP").splitlines()
    assert lines[-2] == f"-# ⚠️ {version().notes[0]}"
    assert lines[-1] == "-# sent as WebP"


def test_notes_survive_a_text_cut_to_discords_limit_and_are_markdown_safe() -> None:
    long = version(
        instruction="x" * 5000,
        before_captions=("b" * 3000,),
        notes=("The image caption was shortened: “a *bold* cat " + "very " * 200 + "”.",),
    )
    text = render.result_text(long, note="sent as WebP")
    assert len(text) <= render.MAX_CONTENT
    note_line = text.splitlines()[-2]
    assert note_line.startswith("-# ⚠️ The image caption was shortened: “a \\*bold\\* cat very")
    assert note_line.endswith("…")
    assert len(note_line) < render.NOTE_CHARS + 20


def test_variations_show_a_note_shared_by_all_once() -> None:
    note = "The language model gave no usable captions."
    made = VariationSet(
        "j1",
        "c1",
        "v0",
        "make it snowy",
        "42",
        tuple(Variation(n, n, EditSettings(), "cap", ("b",), ("a",), 8, 8, notes=(note,)) for n in (1, 2)),
    )
    text = render.variations_text(made)
    assert text.count(note) == 1
    assert text.endswith(f"-# ⚠️ {note}")


def test_the_captions_details_list_the_notes() -> None:
    embed = render.captions_embed(version())
    assert [field.name for field in embed.fields][-1] == "Notes"
    assert "fallback" in (embed.fields[-1].value or "")


async def test_the_console_prints_the_note_under_the_result(tmp_path: Path, editor: StandInEditor) -> None:
    picture_path = write_picture(tmp_path / "cat.png")
    printed = await chat(
        tmp_path / "bot.db", tmp_path / "out", f"/load {picture_path} {FALLBACK}\nadd a hat\n", editor
    )
    lines = printed.splitlines()
    done = [i for i, line in enumerate(lines) if line.startswith("Done: version")]
    assert len(done) == 2
    assert lines[done[0] + 1].startswith("  Note: The language model gave no usable captions")
    assert not any(line.startswith("  Note:") for line in lines[done[1] + 1 :])
