"""The console's steering commands, driven line by line like a pipe, on the stand-in engine."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from handlers.console import ConsoleChat, serve_console
from sessions.store import Store
from tests.support.editor import StandInEditor, stand_in_app
from tests.test_console import ANN, chat, done_ids, write_picture


async def test_fix_shows_the_captions_then_redoes_the_edit_with_the_typed_ones(tmp_path: Path) -> None:
    database, outputs = tmp_path / "bot.db", tmp_path / "out"
    picture = write_picture(tmp_path / "cat.png")
    editor = StandInEditor()
    printed = await chat(
        database,
        outputs,
        f"/load {picture} make it snowy\n/fix\na photo | a picture\na snowy photo\n/captions\n"
        "/fix\n\na picture | a photo\n",
        editor,
    )
    first, fixed = done_ids(printed)
    assert "Before: a picture 1" in printed  # the captions shown first
    assert "  After:  a snowy photo" in printed
    assert "Before: a photo | a picture" in printed  # /captions of the fixed version
    assert "the same, so the edit would change nothing" in printed
    assert editor.language_model_calls == 1
    assert editor.inversions == 1
    store = Store.open(database)
    try:
        version = store.get_version(fixed)
        assert version is not None
        assert version.captions_by == "person"
        assert version.parent_id == (store.get_version(first) or version).parent_id
    finally:
        store.close()


async def test_delete_hides_the_result_and_goes_back(tmp_path: Path) -> None:
    database, outputs = tmp_path / "bot.db", tmp_path / "out"
    picture = write_picture(tmp_path / "cat.png")
    printed = await chat(
        database, outputs, f"/load {picture} make it snowy\nadd a hat\n/delete\n/versions\n/history\n"
    )
    first, second = done_ids(printed)
    assert f"Deleted {second}; back to version {first}" in printed
    assert re.search(rf"{second} .*\(deleted\)", printed)
    assert "Contact sheet of 2 steps" in printed


async def test_variations_write_one_grid_and_pick_makes_one_current(tmp_path: Path) -> None:
    database, outputs = tmp_path / "bot.db", tmp_path / "out"
    picture = write_picture(tmp_path / "cat.png")
    editor = StandInEditor()
    printed = await chat(
        database,
        outputs,
        f"/pick 1\n/load {picture} make it snowy\n/variations\n/pick 3\n/captions\n",
        editor,
    )
    assert "type /variations first" in printed
    grid = re.search(r"Variations of “make it snowy”: (\S+)", printed)
    assert grid is not None
    assert (outputs / Path(grid.group(1)).name).stat().st_size > 0
    assert printed.count("strength ") == 4
    picked = re.search(r"Picked version (\w+)", printed)
    assert picked is not None
    assert editor.batches == [4]
    assert f"Version {picked.group(1)}: “make it snowy”" in printed


async def test_chain_compose_edits_every_turn_from_the_first_inversion(tmp_path: Path) -> None:
    picture = write_picture(tmp_path / "cat.png")
    editor = StandInEditor()
    printed = await chat(
        tmp_path / "bot.db",
        tmp_path / "out",
        f"/chain\n/chain sideways\n/chain compose\n/load {picture} make it snowy\nadd a hat\nat night\n",
        editor,
    )
    assert "Chain mode is reinvert." in printed
    assert "Chain mode is now compose." in printed
    assert len(done_ids(printed)) == 3
    assert editor.inversions == 1
    assert [len(prior) for prior in editor.priors] == [0, 1, 2]


@pytest.mark.parametrize("previews", [True, False])
async def test_previews_are_written_and_their_paths_printed_unless_switched_off(
    tmp_path: Path, previews: bool
) -> None:
    database, outputs = tmp_path / "bot.db", tmp_path / "out"
    picture = write_picture(tmp_path / "cat.png")
    app = stand_in_app(database, StandInEditor())
    printed = io.StringIO()
    console = ConsoleChat(
        app.service,
        session="console",
        author=ANN,
        outputs=outputs,
        stdin=io.StringIO(f"/load {picture} make it snowy\n"),
        stdout=printed,
        previews=previews,
    )
    try:
        await serve_console(app.service, console)
    finally:
        app.close()
    paths = re.findall(r"preview: (\S+)", printed.getvalue())
    assert bool(paths) == previews
    for path in paths:
        assert Path(path).name.startswith("preview-")
