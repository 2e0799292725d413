"""One log format for every command, the levels an admin picks, a rotating file, progress with an ETA."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from editor.logs import ProgressBar, progress_bar, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging replaces the root handlers (pytest's capture among them): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name in ("editor", "sessions", "handlers", "bot"):
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.usefixtures("restore_logging")
def test_lines_look_like_discord_py_s_and_also_go_to_a_rotating_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "logs" / "bot.log"
    setup_logging(0, log_file, max_bytes=400, backups=2)
    for number in range(20):
        logging.getLogger("sessions.jobs").info("edit job%02d requested", number)
    logging.getLogger("sessions.jobs").debug("not at the default level")
    printed = capsys.readouterr().err.splitlines()
    assert len(printed) == 20
    assert re.fullmatch(
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[INFO    \] sessions\.jobs: edit job19 requested", printed[-1]
    )
    assert sorted(path.name for path in log_file.parent.iterdir()) == ["bot.log", "bot.log.1", "bot.log.2"]
    assert log_file.read_text().splitlines()[-1] == printed[-1]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("verbosity", "shown"), [(-1, ["WARNING"]), (0, ["INFO", "WARNING"]), (1, ["DEBUG", "INFO", "WARNING"])]
)
def test_quiet_and_verbose_choose_what_is_shown(
    verbosity: int, shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(verbosity)
    log = logging.getLogger("handlers.discord.bot")
    log.debug("DEBUG")
    log.info("INFO")
    log.warning("WARNING")
    logging.getLogger("httpx2").info("a request")  # libraries' chatter stays out, even with --verbose
    printed = capsys.readouterr().err
    assert [line.rsplit(": ", 1)[1] for line in printed.splitlines()] == shown


def test_off_a_terminal_progress_is_logged_with_its_eta(caplog: pytest.LogCaptureFixture) -> None:
    bar = ProgressBar(total=4, desc="single-turn", unit="edit", log_every_s=3600)
    with caplog.at_level(logging.INFO, logger="progress"):
        for _ in range(4):
            bar.update()
    bar.close()
    [line] = caplog.messages  # the final one only: the interval is long
    assert line.startswith("single-turn: 100%")
    assert re.search(r"4/4 \[\d\d:\d\d<\d\d:\d\d", line)  # elapsed<remaining: the ETA


def test_log_lines_inside_a_progress_bar_go_around_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), progress_bar(2, "multi-turn", "edit") as bar:
        logging.getLogger("evaluation").warning("session 3 turn 1: no image")
        bar.update(2)
    assert "session 3 turn 1: no image" in caplog.messages
