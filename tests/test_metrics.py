"""The Prometheus metrics as a scraper sees them: served by the ops endpoint, counters that only go up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from handlers.discord.ops import OpsServer
from sessions import App, Author, JobFailed, OpsConfig, Place, Rejected
from tests.support.discord.bot_process import free_port, png_bytes
from tests.support.editor import StandInEditor, stand_in_app

ANN = Author("1", "Ann")
PLACE = Place("discord", 10, 20)
EDITS = 260


class OutOfMemoryError(RuntimeError):
    """Named as torch names it: the metrics tell it apart by name, as the worker does."""


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[App, StandInEditor, str]]:
    editor = StandInEditor(steps=1)
    app = stand_in_app(tmp_path / "bot.db", editor)
    await app.service.start()
    port = free_port()
    ops = OpsServer(
        OpsConfig(enabled=True, port=port), app.service.stats, lambda: (True, 0.05), app.service.metrics
    )
    await ops.start()
    try:
        yield app, editor, f"http://127.0.0.1:{port}"
    finally:
        await ops.stop()
        await app.service.stop()
        app.close()


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def cumulative(samples: Samples) -> Samples:
    """The samples that may never go down: counters and histogram buckets, counts and sums."""
    return {key: v for key, v in samples.items() if key[0].endswith(("_total", "_bucket", "_count", "_sum"))}


async def test_counters_only_go_up_across_more_than_200_edits(served: tuple[App, StandInEditor, str]) -> None:
    app, editor, url = served
    editor.failures["crash"] = RuntimeError("a bug in the engine")
    editor.failures["too big"] = OutOfMemoryError("CUDA out of memory")
    editor.fallbacks.add("say it plainly")
    image = png_bytes(size=(40, 30))
    previous = cumulative(await scrape(url))
    done = failed = 0
    for number in range(EDITS):
        instruction = {7: "crash", 3: "too big", 5: "say it plainly"}.get(number % 10, f"edit {number}")
        try:
            await (await app.service.start_edit(PLACE, ANN, image, instruction)).result()
            done += 1
        except JobFailed:
            failed += 1
        if number % 20 == 19:
            now = cumulative(await scrape(url))
            assert set(previous) <= set(now)
            went_down = {key: (previous[key], now[key]) for key in previous if now[key] < previous[key]}
            assert not went_down
            previous = now

    samples = await scrape(url)
    assert done > 200
    assert value(samples, "onthefly_edits_total", outcome="done") == done
    assert value(samples, "onthefly_edits_total", outcome="failed") == failed == EDITS // 10 * 2
    assert value(samples, "onthefly_errors_total", kind="unexpected") == EDITS // 10
    assert value(samples, "onthefly_errors_total", kind="out_of_memory") == EDITS // 10
    assert value(samples, "onthefly_errors_total", kind="timeout") == 0
    assert value(samples, "onthefly_lm_fallbacks_total") == EDITS // 10
    assert value(samples, "onthefly_queue_wait_seconds_count") == EDITS  # every edit started
    assert value(samples, "onthefly_edit_stage_seconds_count", stage="edit") == done
    assert value(samples, "onthefly_jobs", state="done") == done  # read from the database
    assert value(samples, "onthefly_queue_depth") == 0
    assert value(samples, "onthefly_running_jobs") == 0
    assert value(samples, "onthefly_vram_bytes") == 0  # no GPU here
    assert value(samples, "onthefly_up") == 1
    assert value(samples, "onthefly_gateway_latency_seconds") == 0.05


async def test_a_refused_and_a_cancelled_edit_are_counted(served: tuple[App, StandInEditor, str]) -> None:
    app, editor, url = served
    editor.hold("wait here")
    held = await app.service.start_edit(PLACE, ANN, png_bytes(), "wait here")
    queued = [await app.service.start_edit(PLACE, ANN, png_bytes(), f"then {n}") for n in range(2)]
    with pytest.raises(Rejected):  # the per-user cap
        await app.service.start_edit(PLACE, ANN, png_bytes(), "one too many")
    samples = await scrape(url)
    assert value(samples, "onthefly_edits_total", outcome="rejected") == 1
    assert value(samples, "onthefly_queue_depth") == 2
    assert value(samples, "onthefly_running_jobs") == 1
    assert await app.service.cancel(queued[0].job_id, ANN, place=PLACE)
    editor.release("wait here")
    await held.result()
    await queued[1].result()
    samples = await scrape(url)
    assert value(samples, "onthefly_edits_total", outcome="cancelled") == 1
    assert value(samples, "onthefly_edits_total", outcome="done") == 2
