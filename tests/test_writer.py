"""The store writer on a real SQLite file: every write's outcome reaches its waiter, whatever it raised."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.models import Place
from sessions.store import Store
from sessions.writer import WriteFailed, Writer, WriterClosed

PLACE = Place("discord", "1", "2")


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    Store.open(tmp_path / "bot.db").close()  # migrated, as compose leaves it
    writer = Writer(lambda: Store.open(tmp_path / "bot.db"))
    yield writer
    writer.close()


def _options(store: Store) -> dict[str, object]:
    return store.place_options(PLACE)


def _raise(error: BaseException) -> None:
    raise error


async def test_an_ordinary_failure_is_raised_to_its_waiter(writer: Writer) -> None:
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await writer.run(lambda store: _raise(sqlite3.OperationalError("database is locked")))
    assert await writer.run(_options) == {}


@pytest.mark.parametrize(
    "error", [SystemExit(3), KeyboardInterrupt(), StopIteration(), GeneratorExit()], ids=type
)
async def test_any_failure_reaches_its_waiter_and_the_writer_keeps_serving(
    writer: Writer, error: BaseException
) -> None:
    """Not only Exceptions: a SystemExit would end the thread, a StopIteration can't be set on a future."""
    with pytest.raises(WriteFailed) as failure:
        await writer.run(lambda store: _raise(error))
    assert failure.value.__cause__ is error
    await writer.run(lambda store: store.update_place(PLACE, "options", {"flag": True}))
    assert await writer.run(_options) == {"flag": True}


async def test_a_failing_background_write_is_logged_and_the_writer_keeps_serving(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    writer.post(lambda store: _raise(SystemExit(1)))
    assert await writer.run(_options) == {}
    assert "a background write to the database failed" in caplog.text


async def test_a_closed_writer_refuses_writes_at_once(writer: Writer) -> None:
    writer.close()
    with pytest.raises(WriterClosed):
        await writer.run(_options)
    with pytest.raises(WriterClosed):
        writer.post(_options)
    writer.close()  # closing twice is harmless
