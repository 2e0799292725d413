"""The edit worker: fairness, caps, cancel, timeout, failures, progress and shutdown.

Most tests drive the worker with the stand-in editor (tests/support/editor.py): it runs a few
steps per job and can be held before its first step until the test lets it go, so orderings
are decided by the test, not by timing. One test runs the real engine on the tiny models.
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from editor.config import ConfigError
from editor.failures import (
    EditFailed,
    QueueFull,
    UserLimitReached,
    WorkerRejected,
    WorkerStopped,
    WorkerStopping,
)
from editor.progress import Progress
from editor.replicas import RayConfig
from editor.types import STAGES, EditCancelled, EditRequest, EditResult, InvalidInput, StepCallback
from editor.worker import EditWorker, WorkerConfig
from sessions.config import AppConfig, load_config
from tests.support.editor import StandInEditor

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the worker recognises by name."""


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


PICTURE = _png()


def request(name: str) -> EditRequest:
    """A job named by its instruction; given captions make the result's caption that name too."""
    return EditRequest(image=PICTURE, instruction=name, caption=name, captions=((name,), (name,)))


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def collect(updates: AsyncIterator[Progress]) -> list[Progress]:
    return [update async for update in updates]


@pytest.fixture
def editor() -> StandInEditor:
    return StandInEditor()


@pytest.fixture
async def make_worker(editor: StandInEditor) -> AsyncIterator[Callable[..., EditWorker]]:
    """Started workers on the stand-in editor, stopped at the end of the test."""
    workers: list[EditWorker] = []

    async def start(**config: float) -> EditWorker:
        worker = EditWorker(editor, WorkerConfig(**config))
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop()


async def test_a_second_requester_runs_before_the_first_ones_backlog(make_worker, editor):
    worker = await make_worker()
    editor.hold("a1")
    a1 = worker.submit("a1", "alice", request("a1"))
    await until(lambda: worker.running_job_id == "a1")
    others = [worker.submit(name, "alice", request(name)) for name in ("a2", "a3")]
    b1 = worker.submit("b1", "bob", request("b1"))

    assert [worker.position(name) for name in ("b1", "a2", "a3")] == [1, 2, 3]
    assert b1.latest == Progress("b1", "queued", queue_position=1)
    editor.release("a1")
    for handle in (a1, *others, b1):
        await handle.result()
    assert editor.started == ["a1", "b1", "a2", "a3"]


async def test_waiting_requesters_take_turns(make_worker, editor):
    worker = await make_worker(per_user_cap=5)
    editor.hold("x")
    x = worker.submit("x", "carol", request("x"))
    await until(lambda: worker.running_job_id == "x")
    names = ["a1", "a2", "a3", "b1", "b2", "c1"]
    handles = [
        worker.submit(name, {"a": "alice", "b": "bob", "c": "carol"}[name[0]], request(name))
        for name in names
    ]

    editor.release("x")
    for handle in (x, *handles):
        await handle.result()
    assert editor.started == ["x", "a1", "b1", "a2", "b2", "c1", "a3"]


async def test_per_user_cap_counts_the_running_job_and_says_so(make_worker, editor):
    worker = await make_worker(per_user_cap=2)
    editor.hold("a1")
    worker.submit("a1", "alice", request("a1"))
    await until(lambda: worker.running_job_id == "a1")
    worker.submit("a2", "alice", request("a2"))

    with pytest.raises(UserLimitReached, match=r"You already have 2 edits waiting or running; please wait"):
        worker.submit("a3", "alice", request("a3"))
    worker.submit("b1", "bob", request("b1"))
    assert worker.queue_depth == 2
    editor.release("a1")


async def test_global_cap_counts_waiting_jobs_and_frees_up_on_cancel(make_worker, editor):
    worker = await make_worker(max_queue=2)
    editor.hold("x")
    worker.submit("x", "xavier", request("x"))
    await until(lambda: worker.running_job_id == "x")
    worker.submit("y", "yann", request("y"))
    worker.submit("z", "zoe", request("z"))

    with pytest.raises(QueueFull, match=r"very busy.*2 people are waiting.*try again") as refused:
        worker.submit("w", "will", request("w"))
    assert isinstance(refused.value, WorkerRejected)
    assert worker.cancel("y")
    assert worker.submit("w", "will", request("w")).latest.queue_position == 2
    editor.release("x")


async def test_a_newcomer_is_admitted_while_others_hold_several_slots(make_worker, editor):
    """max_queue counts people; a person's further jobs only use the queue while it is short."""
    worker = await make_worker(max_queue=4, per_user_cap=3)
    editor.hold("x")
    worker.submit("x", "xavier", request("x"))
    await until(lambda: worker.running_job_id == "x")
    worker.submit("a1", "alice", request("a1"))
    worker.submit("a2", "alice", request("a2"))  # 1 waiting < 4 * 2/3: a second one fits
    worker.submit("b1", "bob", request("b1"))
    with pytest.raises(QueueFull, match=r"each person can have 1 edit waiting\. .*once yours has started"):
        worker.submit("b2", "bob", request("b2"))  # 3 waiting: the queue is too busy for seconds
    for name, person in (("c1", "carol"), ("d1", "dave")):
        worker.submit(name, person, request(name))  # nothing waiting yet: admitted
    assert worker.queue_depth == 5
    with pytest.raises(QueueFull, match=r"very busy right now \(4 people are waiting\)"):
        worker.submit("e1", "erin", request("e1"))
    with pytest.raises(QueueFull, match=r"each person can have 2 edits waiting"):
        worker.submit("a3", "alice", request("a3"))
    editor.release("x")


async def test_refusals_say_when_to_try_again_once_edits_have_been_timed(make_worker, editor):
    worker = await make_worker(max_queue=1, per_user_cap=1)
    await worker.submit("warm", "alice", request("warm")).result()
    editor.hold("x")
    worker.submit("x", "xavier", request("x"))
    await until(lambda: worker.running_job_id == "x")
    worker.submit("y", "yann", request("y"))
    with pytest.raises(UserLimitReached, match=r"wait for one to finish \(in about 10 seconds\)"):
        worker.check_admission("yann")
    with pytest.raises(QueueFull, match=r"Please try again in about 10 seconds\."):
        worker.check_admission("zoe")
    editor.release("x")


async def test_cancelling_a_waiting_job_touches_no_other(make_worker, editor):
    worker = await make_worker()
    editor.hold("a")
    a = worker.submit("a", "alice", request("a"))
    await until(lambda: worker.running_job_id == "a")
    b = worker.submit("b", "bob", request("b"))
    c = worker.submit("c", "carol", request("c"))
    c_updates = asyncio.create_task(collect(c.progress()))
    await until(lambda: c.latest.queue_position == 2)

    assert worker.cancel("b")
    assert worker.position("c") == 1
    with pytest.raises(EditCancelled):
        await b.result()
    assert not worker.cancel("b")
    assert not worker.cancel("never-submitted")
    editor.release("a")
    assert (await a.result()).caption == "a"
    assert (await c.result()).caption == "c"
    assert editor.started == ["a", "c"]
    queued = [u.queue_position for u in await c_updates if u.state == "queued"]
    assert queued == [2, 1]


async def test_after_a_cancel_the_requesters_next_job_takes_its_turn(make_worker, editor):
    worker = await make_worker()
    editor.hold("x")
    worker.submit("x", "xavier", request("x"))
    await until(lambda: worker.running_job_id == "x")
    for name in ("a1", "a2", "b1", "b2"):
        worker.submit(name, {"a": "alice", "b": "bob"}[name[0]], request(name))
    assert [worker.position(name) for name in ("a1", "b1", "a2", "b2")] == [1, 2, 3, 4]

    worker.cancel("a1")
    assert [worker.position(name) for name in ("a2", "b1", "b2")] == [1, 2, 3]
    editor.release("x")


async def test_cancelling_the_running_job_lets_the_next_one_run(make_worker, editor):
    worker = await make_worker()
    editor.hold("a")
    a = worker.submit("a", "alice", request("a"))
    b = worker.submit("b", "bob", request("b"))
    await until(lambda: worker.running_job_id == "a")

    assert worker.cancel("a")
    with pytest.raises(EditCancelled):
        await a.result()
    assert a.latest.state == "cancelled"
    assert (await b.result()).caption == "b"


async def test_a_cancel_that_comes_after_the_editors_last_check_still_cancels(make_worker):
    """cancel() said yes, so the result of an edit that then finishes anyway is dropped."""
    decoding, cancelled = threading.Event(), threading.Event()

    class DecodesWithoutChecking(StandInEditor):
        def edit(
            self,
            request: EditRequest,
            *,
            callback: StepCallback | None = None,
            cancel: threading.Event | None = None,
            preview: object = None,
        ) -> EditResult:
            decoding.set()
            assert cancelled.wait(5)  # e.g. the VAE decode after the last step: no cancel check
            return super().edit(request, callback=lambda *_: None, cancel=threading.Event())

    worker = EditWorker(DecodesWithoutChecking(), WorkerConfig())
    await worker.start()
    try:
        job = worker.submit("a", "alice", request("a"))
        await asyncio.to_thread(decoding.wait, 5)
        assert worker.cancel("a")
        cancelled.set()
        with pytest.raises(EditCancelled):
            await job.result()
        assert job.latest.state == "cancelled"
        assert (await worker.submit("b", "bob", request("b")).result()).caption == "b"
    finally:
        await worker.stop()


async def test_a_job_over_its_time_limit_fails_and_the_next_one_runs(make_worker, editor):
    worker = await make_worker(job_timeout_s=0.05)
    editor.hold("slow")
    slow = worker.submit("slow", "alice", request("slow"))
    fast = worker.submit("fast", "bob", request("fast"))

    with pytest.raises(EditFailed, match=r"took too long \(over 0.05 seconds\)") as failed:
        await slow.result()
    assert "fewer steps" in failed.value.user_message
    assert slow.latest.state == "failed"
    assert (await fast.result()).caption == "fast"


async def test_an_unexpected_error_is_logged_and_reported_politely(make_worker, editor, caplog):
    worker = await make_worker()
    editor.failures["broken"] = KeyError("internal detail")
    broken = worker.submit("broken", "alice", request("broken"))
    after = worker.submit("after", "alice", request("after"))

    with caplog.at_level(logging.ERROR, logger="editor.worker"), pytest.raises(EditFailed) as failed:
        await broken.result()
    assert failed.value.user_message.startswith("Something went wrong while editing your image")
    assert "internal detail" not in failed.value.user_message
    assert isinstance(failed.value.__cause__, KeyError)
    assert "internal detail" in caplog.text
    assert (await after.result()).caption == "after"


async def test_a_system_exit_inside_the_editor_fails_only_that_job(make_worker, editor):
    worker = await make_worker()
    editor.failures["exits"] = SystemExit(3)
    exits = worker.submit("exits", "alice", request("exits"))
    after = worker.submit("after", "alice", request("after"))
    with pytest.raises(EditFailed):
        await exits.result()
    assert (await after.result()).caption == "after"


async def test_invalid_input_passes_its_message_through(make_worker, editor):
    worker = await make_worker()
    editor.failures["bad"] = InvalidInput("The image is larger than 25 MiB.")
    with pytest.raises(EditFailed, match=r"^The image is larger than 25 MiB\.$"):
        await worker.submit("bad", "alice", request("bad")).result()


@pytest.mark.parametrize("error_class", [OutOfMemoryError, torch.cuda.OutOfMemoryError])
async def test_out_of_memory_gives_a_readable_reason(make_worker, editor, error_class):
    worker = await make_worker()
    editor.failures["huge"] = error_class("CUDA out of memory. Tried to allocate 20.00 GiB")
    with pytest.raises(EditFailed) as failed:
        await worker.submit("huge", "alice", request("huge")).result()
    assert "ran out of memory" in failed.value.user_message
    assert "GiB" not in failed.value.user_message
    assert (await worker.submit("next", "alice", request("next")).result()).caption == "next"


async def test_progress_reports_places_then_steps_then_the_end(make_worker, editor):
    worker = await make_worker()
    editor.hold("x", "a")
    x = worker.submit("x", "xavier", request("x"))
    await until(lambda: worker.running_job_id == "x")
    worker.submit("a", "alice", request("a"))
    b = worker.submit("b", "bob", request("b"))
    updates = asyncio.create_task(collect(b.progress()))

    editor.release("x")
    await until(lambda: b.latest.queue_position == 1)
    editor.release("a")
    seen = await asyncio.wait_for(updates, 5)

    assert seen[:2] == [Progress("b", "queued", queue_position=2), Progress("b", "queued", queue_position=1)]
    running = seen[2:-1]
    assert running, "no running update"
    assert all(u.state == "running" and u.queue_position is None for u in running)
    steps = [u.step for u in running]
    assert steps == sorted(set(steps))
    assert running[-1] == Progress("b", "running", stage="edit", step=3, total=3)
    assert seen[-1] == Progress("b", "done")
    await x.result()


async def test_a_place_that_changes_and_changes_back_is_not_reported_again(make_worker, editor):
    worker = await make_worker()
    editor.hold("x")
    x = worker.submit("x", "xavier", request("x"))
    await until(lambda: worker.running_job_id == "x")
    worker.submit("a1", "alice", request("a1"))
    a2 = worker.submit("a2", "alice", request("a2"))
    updates = asyncio.create_task(collect(a2.progress()))
    await asyncio.sleep(0.01)

    worker.submit("b1", "bob", request("b1"))  # a newcomer goes ahead of alice's second job
    assert worker.position("a2") == 3
    worker.cancel("b1")
    await asyncio.sleep(0.01)
    editor.release("x")
    await x.result()

    queued = [u.queue_position for u in await updates if u.state == "queued"]
    assert queued == [2, 1]


async def test_a_slow_reader_gets_the_latest_state_not_every_step(make_worker):
    editor = StandInEditor(steps=500)
    worker = EditWorker(editor, WorkerConfig())
    await worker.start()
    try:
        handle = worker.submit("long", "alice", request("long"))
        reader = handle.progress()
        first = await anext(reader)
        await handle.result()
        rest = [update async for update in reader]
    finally:
        await worker.stop()

    assert first == Progress("long", "queued", queue_position=1)
    assert len(rest) <= 2
    assert rest[-1] == Progress("long", "done")
    assert all(u.step == 500 for u in rest if u.state == "running")


async def test_late_and_parallel_readers_all_see_the_end(make_worker, editor):
    worker = await make_worker()
    editor.hold("a")
    handle = worker.submit("a", "alice", request("a"))
    readers = [asyncio.create_task(collect(handle.progress())) for _ in range(3)]
    await until(lambda: worker.running_job_id == "a")
    editor.release("a")
    await handle.result()

    for reader in readers:
        assert (await reader)[-1] == Progress("a", "done")
    assert await collect(handle.progress()) == [Progress("a", "done")]
    assert (await handle.result()).caption == "a"


async def test_the_event_loop_keeps_running_while_an_edit_hogs_the_worker(make_worker):
    editor = StandInEditor(steps=15, busy_s=0.02)
    worker = EditWorker(editor, WorkerConfig())
    await worker.start()
    ticks = 0
    try:
        handle = worker.submit("busy", "alice", request("busy"))
        while not handle.latest.final:
            await asyncio.sleep(0.01)
            ticks += 1
        await handle.result()
    finally:
        await worker.stop()
    # The edit takes about 0.3 s: a blocked loop would tick once at most.
    assert ticks >= 5


async def test_stop_without_drain_returns_the_unrun_jobs(make_worker, editor):
    worker = await make_worker()
    editor.hold("a")
    a = worker.submit("a", "alice", request("a"))
    await until(lambda: worker.running_job_id == "a")
    b = worker.submit("b", "bob", request("b"))
    c = worker.submit("c", "carol", request("c"))

    assert await worker.stop() == ["a", "b", "c"]
    for handle in (a, b, c):
        with pytest.raises(WorkerStopped):
            await handle.result()
        assert handle.latest.state == "cancelled"
    assert editor.started == ["a"]
    with pytest.raises(WorkerStopping, match="try again"):
        worker.submit("d", "dora", request("d"))


async def test_stop_with_drain_finishes_waiting_jobs_first(make_worker, editor):
    worker = await make_worker()
    editor.hold("a")
    a = worker.submit("a", "alice", request("a"))
    b = worker.submit("b", "bob", request("b"))
    await until(lambda: worker.running_job_id == "a")

    stopping = asyncio.create_task(worker.stop(drain=True))
    await asyncio.sleep(0.01)
    assert not stopping.done()
    with pytest.raises(WorkerStopping):
        worker.submit("c", "carol", request("c"))
    editor.release("a")
    assert await asyncio.wait_for(stopping, 5) == []
    assert [(await a.result()).caption, (await b.result()).caption] == ["a", "b"]


def test_worker_section_of_the_shipped_config():
    assert load_config(REPO / "config.yaml").worker == WorkerConfig()
    with pytest.raises(ConfigError, match=r"worker: max_queue must be at least 1"):
        AppConfig.from_mapping({"worker": {"max_queue": 0}})
    with pytest.raises(ConfigError, match=r"worker: unknown key\(s\) queue_size"):
        AppConfig.from_mapping({"worker": {"queue_size": 3}})
    ray = AppConfig.from_mapping({"worker": {"backend": "ray", "ray": {"address": "auto", "replicas": 4}}})
    assert ray.worker == WorkerConfig(backend="ray", ray=RayConfig(address="auto", replicas=4))
    with pytest.raises(ConfigError, match=r"worker: backend must be local or ray, got 'gpu'"):
        AppConfig.from_mapping({"worker": {"backend": "gpu"}})
    with pytest.raises(ConfigError, match=r"worker.ray: replicas must be at least 1"):
        AppConfig.from_mapping({"worker": {"ray": {"replicas": 0}}})


def test_the_local_backend_starts_without_importing_ray(tmp_path):
    """Ray is a large import (and starts threads): only ``backend: ray`` may load it."""
    script = (
        "import sys\n"
        "from tests.support.editor import StandInEditor, stand_in_app\n"
        f"app = stand_in_app(__import__('pathlib').Path({str(tmp_path / 'bot.db')!r}), StandInEditor())\n"
        "assert 'ray' not in sys.modules, 'the local backend imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)


async def test_the_tiny_engine_runs_through_the_worker_and_stops_on_cancel(tiny_config):
    from editor.engine import Editor

    config = load_config(tiny_config)
    editor = await asyncio.to_thread(Editor.load, config.engine, config.edit)
    worker = EditWorker(editor, WorkerConfig())
    await worker.start()
    try:
        # Given captions skip BLIP and the language model: this tests the worker, not them.
        def tiny_request(steps: int) -> EditRequest:
            return EditRequest(
                image=Image.new("RGB", (64, 64), (200, 40, 40)),
                instruction="make it a dog",
                settings=editor.defaults.replace(steps=steps),
                caption="a photo of a cat",
                captions=(("a photo of a cat",), ("a photo of a dog",)),
            )

        doomed = worker.submit("doomed", "alice", tiny_request(steps=3))
        kept = worker.submit("kept", "bob", tiny_request(steps=1))
        async for update in doomed.progress():
            if update.stage is not None and update.state == "running":
                assert worker.cancel("doomed")  # mid-edit, on its first reported step
                break
        with pytest.raises(EditCancelled):
            await doomed.result()
        seen = await collect(kept.progress())
        result = await kept.result()
    finally:
        await worker.stop()
    assert seen[0].state in ("queued", "running")
    assert seen[-1] == Progress("kept", "done")
    assert {u.stage for u in seen if u.state == "running"} - {None} <= set(STAGES)
    assert result.image.size == (64, 64)
