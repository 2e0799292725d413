"""How fast the edit worker takes jobs, and whether edits slow the event loop.

Run from the repository root::

    python bench/queue_bench.py                 # stand-in editor: acknowledge latency, throughput
    python bench/queue_bench.py --job-ms 5      # each stand-in edit sleeps 5 ms (10 steps)
    python bench/queue_bench.py --tiny          # also: event-loop lag while tiny edits run
    python bench/queue_bench.py --tiny --torch-threads 1   # steadier on a shared 2-core box
    python bench/queue_bench.py --backend ray --replicas 1 2   # Ray replicas (bench/ray_runs.py)

Part 1 (the tests' stand-in editor, tinting an 8x8 picture): for each number of requesters,
every requester submits jobs one after another (waits for each result before the next), all
requesters at once.
"submit" is the time ``EditWorker.submit`` takes to return; "ack" is from calling
``submit`` to the first ``Progress`` ("queued") a reader receives. Throughput is jobs
finished per second of wall time.

Part 2 (``--tiny``): a 10 ms periodic task measures how late the event loop wakes it
(lag), first with an idle worker, then while the worker runs real edits on the tiny
random-weight models (``editor.tiny`` + ``editor.engine.Editor``), and finally while one
edit runs directly on the event loop instead, to show what the worker saves.

``--backend ray`` measures the worker on Ray replicas instead (bench/ray_runs.py): 20 requesters
x 3 tiny edits on the local backend and on 1 and 2 replicas in one run, and the dispatch overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from editor.progress import Progress
from editor.types import EditRequest
from editor.worker import EditWorker, WorkerConfig
from tests.support.editor import StandInEditor

STUB_STEPS = 10
TICK_S = 0.010


def stub_request() -> EditRequest:
    """An 8x8 picture with its captions given: the stand-in's work per job stays tiny."""
    from PIL import Image

    return EditRequest(
        image=Image.new("RGB", (8, 8)), instruction="x", caption="stub", captions=(("stub",), ("stub",))
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True)
class QueueRun:
    users: int
    jobs: int
    submit_s: list[float]
    ack_s: list[float]
    wall_s: float


async def queue_run(users: int, jobs_per_user: int, job_s: float, request: EditRequest) -> QueueRun:
    editor = StandInEditor(steps=STUB_STEPS, step_s=job_s / STUB_STEPS)
    worker = EditWorker(editor, WorkerConfig(max_queue=max(50, users)))
    await worker.start()
    submit_s: list[float] = []
    ack_s: list[float] = []

    async def requester(user: int) -> None:
        for index in range(jobs_per_user):
            began = time.perf_counter()
            handle = worker.submit(f"{user}-{index}", f"user-{user}", request)
            submitted = time.perf_counter()
            updates = handle.progress()
            await anext(updates)
            acknowledged = time.perf_counter()
            await updates.aclose()
            await handle.result()
            submit_s.append(submitted - began)
            ack_s.append(acknowledged - began)

    began = time.perf_counter()
    await asyncio.gather(*(requester(user) for user in range(users)))
    wall_s = time.perf_counter() - began
    await worker.stop()
    return QueueRun(users, users * jobs_per_user, submit_s, ack_s, wall_s)


async def measure_lag(duration_s: float | None, until: asyncio.Future[Any] | None = None) -> list[float]:
    """Lateness of a 10 ms periodic wake-up, for ``duration_s`` or until ``until`` is done."""
    lags: list[float] = []
    deadline = time.perf_counter() + (duration_s or 0.0)
    while (until is not None and not until.done()) or (until is None and time.perf_counter() < deadline):
        began = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lags.append(time.perf_counter() - began - TICK_S)
    return lags


@dataclass(frozen=True)
class LagRun:
    label: str
    lags: list[float]
    note: str


async def tiny_lag_runs(edits: int, steps: int, idle_s: float) -> list[LagRun]:
    from PIL import Image

    from editor.engine import Editor
    from editor.tiny import write_tiny_models
    from sessions.config import load_config

    with tempfile.TemporaryDirectory() as folder:
        config = load_config(write_tiny_models(folder))
        editor = Editor.load(config.engine, config.edit)
    image = Image.new("RGB", (64, 64), (180, 60, 30))

    def make_request(seed: int) -> EditRequest:
        # Given captions skip BLIP and the random language model (slow, garbage) on purpose:
        # the diffusion steps are what occupies the worker in production.
        return EditRequest(
            image=image,
            instruction="make it a dog",
            settings=editor.defaults.replace(steps=steps),
            seed=seed,
            caption="a photo of a cat",
            captions=(("a photo of a cat",), ("a photo of a dog",)),
        )

    editor.edit(make_request(0))  # warm-up: first calls pay one-off costs
    worker = EditWorker(editor, WorkerConfig())
    await worker.start()
    idle = await measure_lag(idle_s)

    async def run_edits() -> float:
        began = time.perf_counter()
        handles = [worker.submit(f"tiny-{n}", f"user-{n}", make_request(n)) for n in range(edits)]
        readers = [asyncio.create_task(drain(handle.progress())) for handle in handles]
        for handle in handles:
            await handle.result()
        await asyncio.gather(*readers)
        return (time.perf_counter() - began) / edits

    edits_task = asyncio.ensure_future(run_edits())
    busy = await measure_lag(None, until=edits_task)
    per_edit_s = await edits_task
    await worker.stop()

    finished: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    ticker = asyncio.ensure_future(measure_lag(None, until=finished))
    await asyncio.sleep(5 * TICK_S)  # let the ticker settle into its rhythm
    editor.edit(make_request(0))  # deliberately on the event loop: what the worker avoids
    await asyncio.sleep(5 * TICK_S)
    finished.set_result(None)
    inline = await ticker

    note = f"{edits} edits, {per_edit_s:.2f} s each"
    return [
        LagRun("idle worker", idle, f"{idle_s:.0f} s"),
        LagRun("worker editing", busy, note),
        LagRun("edit on the loop", inline, "1 edit, no worker"),
    ]


async def drain(updates: AsyncIterator[Progress]) -> None:
    """Read progress like a transport would, so delivery is part of the measurement."""
    async for _ in updates:
        pass


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def print_queue_table(runs: list[QueueRun], job_ms: float) -> None:
    print(f"\nWorker queue, stand-in editor ({job_ms:g} ms per job, {STUB_STEPS} progress steps)")
    print("| requesters | jobs | submit p50 ms | submit p99 ms | ack p50 ms | ack p99 ms | jobs/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(
            f"| {run.users} | {run.jobs} | {ms(percentile(run.submit_s, 0.5))} "
            f"| {ms(percentile(run.submit_s, 0.99))} | {ms(percentile(run.ack_s, 0.5))} "
            f"| {ms(percentile(run.ack_s, 0.99))} | {run.jobs / run.wall_s:,.0f} |"
        )


def print_lag_table(runs: list[LagRun]) -> None:
    idle_p50 = max(statistics.median(runs[0].lags), 1e-6)
    idle_p99 = max(percentile(runs[0].lags, 0.99), 1e-6)
    print(f"\nEvent-loop lag of a {TICK_S * 1000:g} ms periodic task, tiny engine on CPU (captions given)")
    print("| condition | ticks | lag p50 ms | lag p99 ms | lag max ms | p50 / idle | p99 / idle | run |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for run in runs:
        p50, p99 = statistics.median(run.lags), percentile(run.lags, 0.99)
        print(
            f"| {run.label} | {len(run.lags)} | {ms(p50)} | {ms(p99)} | {ms(max(run.lags))} "
            f"| {p50 / idle_p50:.1f} | {p99 / idle_p99:.1f} | {run.note} |"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 20, 200], help="requester counts")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per requester count (about)")
    parser.add_argument("--job-ms", type=float, default=0.0, help="sleep of each stand-in edit")
    parser.add_argument("--tiny", action="store_true", help="also measure loop lag with the tiny engine")
    parser.add_argument("--tiny-edits", type=int, default=3, help="edits in the busy phase")
    parser.add_argument("--tiny-steps", type=int, default=4, help="diffusion steps of each tiny edit")
    parser.add_argument("--idle-s", type=float, default=3.0, help="length of the idle phase")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local", help="ray: bench/ray_runs.py")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts (ray)")
    parser.add_argument("--requesters", type=int, default=20, help="requesters at once (ray)")
    parser.add_argument("--edits", type=int, default=3, help="edits per requester, one after another (ray)")
    parser.add_argument("--overhead-jobs", type=int, default=200, help="empty jobs in a row (ray)")
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    if args.backend == "ray":
        from ray_runs import ray_main  # next to this script, as edit_bench imports full_size_models

        await ray_main(
            sorted(args.replicas), args.requesters, args.edits, args.tiny_steps, args.overhead_jobs
        )
        return
    request = stub_request()
    runs = [
        await queue_run(users, max(1, args.jobs // users), args.job_ms / 1000, request)
        for users in args.users
    ]
    print_queue_table(runs, args.job_ms)
    if args.tiny:
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        print(f"(torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()})", flush=True)
        print_lag_table(await tiny_lag_runs(args.tiny_edits, args.tiny_steps, args.idle_s))


if __name__ == "__main__":
    asyncio.run(main())
