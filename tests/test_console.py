"""The console chat: driven line by line like a pipe, on the stand-in engine and end to end on tiny models."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from handlers.console import ConsoleChat, serve_console
from sessions import Author, EditSettings, Place
from sessions.store import Store
from tests.support.editor import StandInEditor, stand_in_app

REPO = Path(__file__).resolve().parent.parent
ANN = Author("console:ann", "ann")


def write_picture(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, (30, 140, 90)).save(path)
    return path


async def chat(database: Path, outputs: Path, script: str, editor: StandInEditor | None = None) -> str:
    """Run one console session over ``script`` (as if piped in) and return what it printed.

    Like a run of ``bot.py``, each session composes its own parts on the database, then closes them.
    """
    app = stand_in_app(database, editor or StandInEditor())
    printed = io.StringIO()
    console = ConsoleChat(
        app.service, session="console", author=ANN, outputs=outputs, stdin=io.StringIO(script), stdout=printed
    )
    try:
        await serve_console(app.service, console)
    finally:
        app.close()
    return printed.getvalue()


def done_ids(printed: str) -> list[str]:
    return re.findall(r"Done: version (\w+)", printed)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "var" / "bot.db"


@pytest.fixture
def store(database: Path) -> Iterator[Store]:
    """The test's own connection to the database the chats use."""
    opened = Store.open(database)
    yield opened
    opened.close()


async def test_a_piped_session_edits_and_uses_every_command(
    tmp_path: Path, database: Path, store: Store
) -> None:
    picture = write_picture(tmp_path / "my picture.png")
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    outputs = tmp_path / "outputs"
    script = "\n".join(
        [
            "make it snowy",
            "/load",
            f"/load {tmp_path / 'missing.png'}",
            f"/load {tmp_path}",
            f"/load {tmp_path / 'notes.txt'} make it snowy",
            f'/load "{picture}"',
            "",
            "make it snowy",
            "/captions",
            "add a red hat",
            "/retry",
            "/stronger",
            "/subtler",
            "/undo",
            "/versions",
            "/history",
            "/goto nope",
            "/bogus",
            "/help",
            "/quit",
            "this line is never read",
        ]
    )
    printed = await chat(database, outputs, script)

    assert "There is no image yet" in printed
    assert "Please say which image to load" in printed
    assert "I can't find the file" in printed
    assert "is a folder" in printed
    assert "couldn't read that file as an image" in printed
    assert "Loaded my picture.png" in printed
    assert "BLIP saw the input as: a picture 1" in printed
    assert "I can't find that image version" in printed
    assert "I don't know the command /bogus" in printed
    assert "/stronger, /subtler" in printed
    assert "  edit: 3/3 (100%)" in printed
    versions = done_ids(printed)
    assert len(versions) == 5  # snowy, red hat, retry, stronger, subtler
    for version_id in versions:
        assert Image.open(outputs / f"{version_id}.png").size == (32, 24)
    snowy = versions[0]
    assert f"Back to version {snowy}" in printed
    assert re.search(rf"^\* +{snowy}", printed, re.MULTILINE)  # /versions marks the current one
    assert len(re.findall(r"^[ *] {5}\w+ ", printed, re.MULTILINE)) == 4  # four siblings under snowy
    [sheet] = re.findall(r"Contact sheet of 2 steps: (\S+)", printed)
    assert Image.open(sheet).format == "PNG"
    assert printed.rstrip().endswith("Bye.")
    assert store.job_counts() == {"done": 5}  # nothing after /quit was run
    assert store.place_options(Place.console("console")) == {"current_version": snowy}


async def test_unreadable_paths_and_input_get_a_polite_answer_and_no_hang(
    tmp_path: Path, database: Path
) -> None:
    printed = await chat(
        database, tmp_path / "outputs", "/load ~no-such-user-here/cat.png\n/load a\0b.png\n/help\n"
    )
    assert "I can't find the home folder in ~no-such-user-here/cat.png" in printed
    assert "a character no file name can have" in printed
    assert "/stronger, /subtler" in printed  # the chat went on

    app = stand_in_app(database, StandInEditor())
    not_text = io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait\n/help\n"), encoding="utf-8")
    printed_io = io.StringIO()
    console = ConsoleChat(
        app.service, session="console", author=ANN, outputs=tmp_path, stdin=not_text, stdout=printed_io
    )
    try:
        await asyncio.wait_for(serve_console(app.service, console), 10)  # the reader's death ends the chat
    finally:
        app.close()
    assert "Sorry: I can't read the input any more ('utf-8' codec can't decode" in printed_io.getvalue()


async def test_an_unexpected_error_in_a_command_is_logged_and_the_chat_goes_on(
    tmp_path: Path, database: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    picture = write_picture(tmp_path / "cat.png")
    outputs = tmp_path / "outputs"
    first = await chat(database, outputs, f"/load {picture} make it snowy\n")
    [snowy] = done_ids(first)

    def broken(self: ConsoleChat, _: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ConsoleChat, "_history", broken)
    with caplog.at_level(logging.ERROR, logger="handlers.console"):
        printed = await chat(database, outputs, "/history\n/goto " + snowy + "\n")
    assert "Sorry: something went wrong with that" in printed
    assert "disk full" not in printed
    assert "disk full" in caplog.text
    assert f"Now at version {snowy}" in printed


async def test_reopening_the_session_continues_where_it_was(
    tmp_path: Path, database: Path, store: Store
) -> None:
    picture = write_picture(tmp_path / "cat.png")
    outputs = tmp_path / "outputs"
    first = await chat(database, outputs, f"/load {picture} make it snowy\n")  # ends at end of input
    [snowy] = done_ids(first)

    second = await chat(database, outputs, "add a hat\n/goto " + snowy + "\n")
    assert f"Continuing with version {snowy}" in second
    [hat] = done_ids(second)
    assert store.get_version(hat).parent_id == snowy
    assert f"Now at version {snowy}" in second


async def test_an_edit_interrupted_by_a_restart_is_finished_and_reported(
    tmp_path: Path, database: Path, store: Store
) -> None:
    picture = write_picture(tmp_path / "cat.png")
    job = store.add_job(
        kind="start",
        place=Place.console("console"),
        requester=ANN,
        instruction="make it snowy",
        settings=EditSettings(steps=4, num_captions=2),
        seed=5,
        input_png=picture.read_bytes(),
        input_size=(64, 48),
        reply_context={"console": "console"},
    )
    store.mark_running(job.id)  # then the process died

    printed = await chat(database, tmp_path / "outputs", "/captions\n")
    assert "Finishing “make it snowy”, started before the restart" in printed
    [version_id] = done_ids(printed)
    assert store.get_job(job.id).result_version_id == version_id
    assert f"Version {version_id}: “make it snowy” by ann" in printed


def run_bot(config: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "DISCORD_TOKEN"}
    environment |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(REPO / "bot.py"), "--config", str(config), *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=environment,
        check=False,
    )


@pytest.mark.slow
def test_the_console_runs_on_the_tiny_models_through_a_pipe(tmp_path: Path, tiny_config: Path) -> None:
    """``bot.py --console`` end to end offline, twice: the second run resumes the session."""
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    models = config["engine"]["models"]
    models |= {name: str(tiny_config.parent / folder) for name, folder in models.items()}
    local_config = tmp_path / "config.yaml"  # no storage section: the defaults, next to this file
    local_config.write_text(yaml.safe_dump(config), encoding="utf-8")
    picture = write_picture(tmp_path / "photo.png", (80, 60))

    first = run_bot(
        local_config, f"/load {picture} make it snowy\n/stronger\n/captions\n/history\n", "--console"
    )
    assert first.returncode == 0, first.stderr
    versions = done_ids(first.stdout)
    assert len(versions) == 2
    for version_id in versions:
        assert Image.open(tmp_path / "outputs" / f"{version_id}.png").size == (64, 48)
    assert "BLIP saw the input as:" in first.stdout
    # The tiny Phi writes noise: the first edit's captions are the fallback, and the console says so.
    assert "  Note: The language model gave no usable captions" in first.stdout
    assert "Contact sheet of 2 steps" in first.stdout  # the original and the stronger sibling
    assert (tmp_path / "var" / "bot.db").is_file()

    second = run_bot(local_config, "/undo\n/versions\n", "--console")
    assert second.returncode == 0, second.stderr
    assert f"Continuing with version {versions[1]}" in second.stdout
    assert re.search(r"Back to version \w+ \(the original", second.stdout)  # stronger is a sibling
