"""The edit worker on Ray replicas (``worker.backend: ray``): a real local Ray on 127.0.0.1.

One Ray and two replicas serve the whole module (starting them takes seconds). Each replica runs
the stand-in editor in its own process; a :class:`Board` (a shared folder) holds jobs and records
which process started which, so orderings and overlaps are decided by the test, not by timing.
Killed replicas are replaced by the pool, so later tests find two again.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from PIL import Image

from editor.failures import EditFailed, UserLimitReached
from editor.progress import Progress
from editor.replicas import RayConfig, start_ray_replicas
from editor.types import EditCancelled, EditRequest
from editor.worker import EditWorker, WorkerConfig
from sessions import App, Author, JobFailed, Place
from tests.support.db_checks import database_problems
from tests.support.editor import Board, BoardStandIn, StandInEditor, stand_in_app

if TYPE_CHECKING:  # Ray itself is imported by the fixture, after the environment is set
    from editor.ray_replicas import RayReplicas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Generous: a replacement replica is a new process importing torch on a busy machine.
WAIT_S = 90.0
PLACE = Place("discord", 10, 20)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def request(name: str) -> EditRequest:
    return EditRequest(image=png(), instruction=name, caption=name, captions=((name,), (name,)))


async def until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Board:
    return Board(tmp_path_factory.mktemp("board"))


@pytest.fixture(scope="module")
def replicas(board: Board) -> Iterator[RayReplicas]:
    """Two stand-in replicas on a Ray this module starts: loopback only, no token file, no usage report."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    config = RayConfig(replicas=2, gpus_per_replica=0, cpus_per_replica=1, hang_timeout_s=3.0)
    cuda_error = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    pool = start_ray_replicas(
        config, BoardStandIn(board, steps=5, step_s=0.01, failures=(("cuda-error", cuda_error),))
    )
    assert {info.node for info in pool.up} == {"127.0.0.1"}
    yield pool
    pool.close()


@pytest.fixture
async def make_worker(replicas: RayReplicas) -> AsyncIterator[Callable[..., EditWorker]]:
    workers: list[EditWorker] = []

    async def start(**config: float) -> EditWorker:
        worker = EditWorker(replicas.replicas, WorkerConfig(**config))
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop()


@pytest.fixture
async def app(tmp_path: Path, replicas: RayReplicas) -> AsyncIterator[App]:
    app = stand_in_app(tmp_path / "bot.db", StandInEditor(), replicas=replicas.replicas)
    await app.service.start()
    yield app
    await app.service.stop()
    app.close()


def starts(board: Board, name: str) -> list[int]:
    """The processes that began the named edit, in order."""
    return [pid for started, pid in board.started() if started == name]


async def test_two_replicas_edit_for_two_people_at_once_and_both_land_in_the_tree(app, board):
    board.hold("ann-at-once", "bob-at-once")
    ann = await app.service.start_edit(PLACE, Author("1", "Ann"), png(), "ann-at-once")
    bob = await app.service.start_edit(PLACE, Author("2", "Bob"), png(), "bob-at-once")

    # Both began before either may end: they run at the same time, in two processes.
    await until(lambda: bool(starts(board, "ann-at-once") and starts(board, "bob-at-once")))
    assert starts(board, "ann-at-once") != starts(board, "bob-at-once")
    board.release("ann-at-once")
    board.release("bob-at-once")
    versions = [await ann.result(), await bob.result()]

    for version, name in zip(versions, ("ann-at-once", "bob-at-once"), strict=True):
        lineage = app.store.conversation_versions(version.conversation_id)
        assert [v.instruction for v in lineage] == [None, name]
        assert app.service.image_png(version.id, place=PLACE).startswith(b"\x89PNG")
    assert database_problems(app.store) == []


async def test_fairness_holds_across_replicas(make_worker, board):
    worker = await make_worker()
    names = {"fair-a1": "alice", "fair-a2": "alice", "fair-a3": "alice", "fair-b1": "bob"}
    board.hold(*names)
    handles = [worker.submit(name, requester, request(name)) for name, requester in names.items()]

    def order() -> list[str]:
        return [name for name, _ in board.started() if name in names]

    released: list[str] = []
    while len(released) < len(names):
        # Both replicas busy (or nothing left to start): free one, so the next start is the queue's pick.
        busy = min(2, len(names) - len(released))
        await until(lambda: len(order()) - len(released) == busy)  # noqa: B023 (read at once)
        released.append(next(name for name in order() if name not in released))
        board.release(released[-1])
    for handle in handles:
        await handle.result()

    assert order()[-1] == "fair-a3", f"bob's one edit must not wait behind alice's backlog: {order()}"


async def test_progress_arrives_in_order(make_worker):
    worker = await make_worker()
    handle = worker.submit("steps", "alice", request("steps"))
    seen = [update async for update in handle.progress()]

    assert seen[-1] == Progress("steps", "done")
    running = [u for u in seen if u.state == "running" and u.stage is not None]
    assert running[-1] == Progress("steps", "running", stage="edit", step=5, total=5)
    assert [u.step for u in running] == sorted({u.step for u in running})
    states = [u.state for u in seen]
    assert states == sorted(states, key=["queued", "running", "done"].index)


async def test_cancel_reaches_the_running_replica_and_the_next_job_runs(make_worker, board):
    worker = await make_worker()
    board.hold("cancel-a", "cancel-b")
    doomed = worker.submit("cancel-a", "alice", request("cancel-a"))
    busy = worker.submit("cancel-b", "bob", request("cancel-b"))
    await until(lambda: bool(starts(board, "cancel-a") and starts(board, "cancel-b")))
    waiting = worker.submit("cancel-c", "carol", request("cancel-c"))

    assert worker.cancel("cancel-a")
    with pytest.raises(EditCancelled):
        await doomed.result()
    assert (await waiting.result()).caption == "cancel-c"  # on the freed replica; cancel-b still holds
    board.release("cancel-b")
    assert (await busy.result()).caption == "cancel-b"
    board.release("cancel-a")


async def test_the_per_user_cap_counts_jobs_on_every_replica(make_worker, board):
    worker = await make_worker(per_user_cap=2)
    board.hold("cap-1", "cap-2")
    held = [worker.submit(name, "alice", request(name)) for name in ("cap-1", "cap-2")]
    await until(lambda: bool(starts(board, "cap-1") and starts(board, "cap-2")))

    with pytest.raises(UserLimitReached, match="You already have 2 edits waiting or running"):
        worker.submit("cap-3", "alice", request("cap-3"))
    for name in ("cap-1", "cap-2"):
        board.release(name)
    for handle in held:
        await handle.result()


async def test_a_replica_killed_mid_job_and_the_job_runs_on_the_other(make_worker, board):
    worker = await make_worker()
    board.hold("killed-once")
    handle = worker.submit("killed-once", "alice", request("killed-once"))
    await until(lambda: bool(starts(board, "killed-once")))

    os.kill(starts(board, "killed-once")[0], signal.SIGKILL)
    await until(lambda: len(starts(board, "killed-once")) == 2)
    first, second = starts(board, "killed-once")
    assert first != second
    board.release("killed-once")
    assert (await handle.result()).caption == "killed-once"


async def test_a_job_that_loses_two_replicas_is_reported_and_nothing_is_lost(app, board):
    """The first replica is killed, the second hangs (SIGSTOP): both are replaced, the job reported."""
    board.hold("lost-twice")
    doomed = await app.service.start_edit(PLACE, Author("1", "Ann"), png(), "lost-twice")
    await until(lambda: bool(starts(board, "lost-twice")))
    os.kill(starts(board, "lost-twice")[0], signal.SIGKILL)
    await until(lambda: len(starts(board, "lost-twice")) == 2)
    os.kill(starts(board, "lost-twice")[1], signal.SIGSTOP)

    with pytest.raises(JobFailed, match="crashed twice"):
        await doomed.result()
    board.release("lost-twice")
    # Both original replicas are gone: this edit runs on a replacement.
    after = await (
        await app.service.start_edit(PLACE, Author("2", "Bob"), png(), "after-the-losses")
    ).result()
    assert app.service.image_png(after.id, place=PLACE).startswith(b"\x89PNG")
    assert app.store.job_counts() == {"done": 1, "failed": 1}
    assert database_problems(app.store) == []


async def test_a_cuda_error_replaces_the_replica_and_the_job_runs_once_more(make_worker, board):
    """A CUDA error leaves the device unusable: the replica is replaced, the job tried elsewhere."""
    worker = await make_worker()
    with pytest.raises(EditFailed, match="crashed twice"):
        await worker.submit("cuda-error", "alice", request("cuda-error")).result()

    first, second = starts(board, "cuda-error")
    assert first != second
    assert (await worker.submit("after-cuda", "bob", request("after-cuda")).result()).caption == "after-cuda"
    assert not {first, second} & set(starts(board, "after-cuda")), "the failed processes were replaced"


async def test_a_batch_of_variations_runs_as_one_job_on_a_replica_with_its_previews(make_worker):
    worker = await make_worker()
    name = "varied-on-ray"
    batch = tuple(
        EditRequest(
            image=png(), instruction=name, seed=seed, captions=((name,), (f"{name} {seed}",)), previews=True
        )
        for seed in range(3)
    )
    handle = worker.submit("many", "ann", batch)
    previews = [update.preview async for update in handle.progress() if update.preview is not None]
    results = await handle.result()
    assert isinstance(results, tuple)
    assert len(results) == 3
    assert [r.after_captions for r in results] == [(f"{name} {seed}",) for seed in range(3)]
    assert results[0].inversion == results[2].inversion, "one inversion for the batch"
    assert previews, "previews cross from the replica"
    assert all(p.startswith(b"\x89PNG") for p in previews)
