"""Logging and progress for every command (the bot, ``python -m editor``, ``python -m evaluation``).

One format everywhere, discord.py's (``setup_logging``): an admin reads the bot's start-up, each
request and each result at INFO, the default. Progress bars are tqdm's, with log lines routed
around them so neither garbles the other; where stderr is no terminal (a service, a container,
``nohup``) a bar would be noise, so the same progress is logged now and then instead.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

FORMAT = "[{asctime}] [{levelname:<8}] {name}: {message}"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Libraries that log every HTTP request at INFO: only their warnings are worth an admin's time.
_CHATTY = ("httpx", "httpx2", "urllib3", "filelock", "PIL")

#: Our own packages: ``--verbose`` shows their DEBUG lines, not every library's.
_OURS = ("__main__", "bot", "editor", "sessions", "handlers", "evaluation", "bench")


def setup_logging(
    verbosity: int = 0, log_file: Path | None = None, max_bytes: int = 10 * 2**20, backups: int = 3
) -> None:
    """Log to stderr at INFO (``verbosity`` -1: warnings only; 1: our DEBUG lines too), and to a
    rotating ``log_file`` when one is given."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT, DATE_FORMAT, style="{")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.WARNING if verbosity < 0 else logging.INFO)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _OURS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 0 else logging.NOTSET)
    logging.captureWarnings(True)
    if not sys.stderr.isatty():  # the libraries' download and loading bars: noise in a service's log
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


class ProgressBar:
    """A tqdm bar (with its ETA) on a terminal; elsewhere a log line every ``log_every_s`` seconds."""

    def __init__(self, total: int, desc: str, unit: str, log_every_s: float = 30.0) -> None:
        from tqdm import tqdm

        self._terminal = sys.stderr.isatty()
        self._bar: tqdm = tqdm(
            total=total, desc=desc, unit=unit, file=sys.stderr if self._terminal else io.StringIO()
        )
        self._log_every_s = log_every_s
        self._logged_at = time.monotonic()

    def update(self, n: int = 1) -> None:
        self._bar.update(n)
        finished = self._bar.total is not None and self._bar.n >= self._bar.total
        if not self._terminal and (finished or time.monotonic() - self._logged_at >= self._log_every_s):
            self._logged_at = time.monotonic()
            logging.getLogger("progress").info("%s", self._bar.format_meter(**self._bar.format_dict))

    def close(self) -> None:
        self._bar.close()


@contextmanager
def progress_bar(total: int, desc: str, unit: str) -> Iterator[ProgressBar]:
    """A :class:`ProgressBar` whose neighbours' log lines go above it, not through it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = ProgressBar(total, desc, unit)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()
