"""``queue_bench.py --backend ray``: the worker on Ray replicas against the local backend, one run.

Tiny engine (random weights, CPU, captions given so each edit is diffusion steps): every requester
asks for its edits one after another (waits for each result), all requesters at once, first on the
local backend (one thread), then on 1, 2, ... replicas of a local Ray. Figures are jobs/s and the
time from ``submit`` to the result, and each run's ratio to the 1-replica run.

Control: the same with stand-in edits that sleep, not compute: on a box whose cores are busy (2
cores here, shared), the tiny engine measures the CPUs; the control measures the dispatch.

Dispatch overhead: the stand-in editor with nothing to compute, jobs one after another, in this
process and on one replica: the difference per job is the Ray round trip (and the progress poll).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from PIL import Image

from editor.replicas import RayConfig, Replica, load_engine
from editor.types import EditRequest, SupportsEdit
from editor.worker import EditWorker, WorkerConfig
from tests.support.editor import StandInEditor

if TYPE_CHECKING:
    from editor.ray_replicas import RayReplicas

#: The sleeping stand-in's step: 10 steps, 50 ms an edit.
SLEEP_STEP_S = 0.005


@dataclass(frozen=True)
class ReplicaRun:
    label: str
    replicas: int
    latencies: list[float]
    wall_s: float

    @property
    def jobs_per_s(self) -> float:
        return len(self.latencies) / self.wall_s


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def requesters_run(
    runs_on: SupportsEdit | Sequence[Replica], users: int, edits: int, make: Callable[[int], EditRequest]
) -> tuple[list[float], float]:
    """Latency of every edit (submit to result) and the wall time of the whole run."""
    worker = EditWorker(runs_on, WorkerConfig(max_queue=max(50, users * edits), per_user_cap=edits))
    await worker.start()
    latencies: list[float] = []

    async def requester(user: int) -> None:
        for index in range(edits):
            began = time.perf_counter()
            await worker.submit(f"{user}-{index}", f"user-{user}", make(user * edits + index)).result()
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(requester(user) for user in range(users)))
    wall_s = time.perf_counter() - began
    await worker.stop()
    return latencies, wall_s


def start_local_ray(cpus: int) -> None:
    """A Ray for this run only: 127.0.0.1, no usage report, no token file (set before the import)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def pool(replicas: int, load: Callable[[], SupportsEdit]) -> RayReplicas:
    from editor.ray_replicas import RayReplicas

    return RayReplicas.start(RayConfig(replicas=replicas, gpus_per_replica=0, cpus_per_replica=1), load)


async def compare(
    local: SupportsEdit,
    load: Callable[[], SupportsEdit],
    make: Callable[[int], EditRequest],
    replica_counts: list[int],
    *,
    users: int,
    edits: int,
) -> list[ReplicaRun]:
    """The same requesters on ``local`` (this process), then on each count of replicas of ``load``."""
    local.edit(make(0), callback=lambda *_: None, cancel=threading.Event())  # warm-up: one-off costs
    latencies, wall_s = await requesters_run(local, users, edits, make)
    runs = [ReplicaRun("local", 1, latencies, wall_s)]
    for count in replica_counts:
        replicas = pool(count, load)
        try:
            await requesters_run(replicas.replicas, count, 1, make)  # warm-up: one edit per replica
            latencies, wall_s = await requesters_run(replicas.replicas, users, edits, make)
        finally:
            replicas.close()
        runs.append(ReplicaRun("ray", count, latencies, wall_s))
    return runs


async def tiny_runs(replica_counts: list[int], users: int, edits: int, steps: int) -> list[ReplicaRun]:
    import torch

    from editor.engine import Editor
    from editor.tiny import write_tiny_models
    from sessions.config import load_config

    folder = tempfile.mkdtemp(prefix="tiny-models-")  # replicas load from it: kept for the run
    config = load_config(write_tiny_models(folder))
    image = Image.new("RGB", (64, 64), (180, 60, 30))

    def make(seed: int) -> EditRequest:
        return EditRequest(
            image=image,
            instruction="make it a dog",
            settings=config.edit.replace(steps=steps),
            seed=seed,
            caption="a photo of a cat",
            captions=(("a photo of a cat",), ("a photo of a dog",)),
        )

    torch.set_num_threads(1)  # what one replica has (cpus_per_replica: 1): the same CPU for each
    editor = Editor.load(config.engine, config.edit)
    load = partial(load_engine, config.engine, config.edit)
    return await compare(editor, load, make, replica_counts, users=users, edits=edits)


def stub(_: int) -> EditRequest:
    return EditRequest(
        image=Image.new("RGB", (8, 8)), instruction="x", caption="stub", captions=(("stub",), ("stub",))
    )


async def sleeping_runs(replica_counts: list[int], users: int, edits: int) -> list[ReplicaRun]:
    """The control: edits that wait (50 ms) instead of computing, so CPUs are not what limits."""
    load = partial(StandInEditor, steps=10, step_s=SLEEP_STEP_S)
    return await compare(load(), load, stub, replica_counts, users=users, edits=edits)


async def dispatch_overhead(jobs: int) -> tuple[list[float], list[float]]:
    """Per-job seconds of empty stand-in edits in a row: in this process, then on one replica."""
    local, _ = await requesters_run(StandInEditor(steps=1), 1, jobs, stub)
    replicas = pool(1, partial(StandInEditor, steps=1))
    try:
        await requesters_run(replicas.replicas, 1, 5, stub)  # warm-up
        remote, _ = await requesters_run(replicas.replicas, 1, jobs, stub)
    finally:
        replicas.close()
    return local, remote


def print_runs(title: str, runs: list[ReplicaRun]) -> None:
    one = runs[1]  # the fewest replicas (1 as a rule): the baseline of the ratios
    print(f"\n{title}")
    print(
        "| backend | replicas | edits | jobs/s | result p50 s | result p99 s | jobs/s / 1 replica "
        "| p50 / 1 replica | p99 / 1 replica |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        p50, p99 = percentile(run.latencies, 0.5), percentile(run.latencies, 0.99)
        print(
            f"| {run.label} | {run.replicas} | {len(run.latencies)} | {run.jobs_per_s:.2f} | {p50:.3f} "
            f"| {p99:.3f} | {run.jobs_per_s / one.jobs_per_s:.2f} "
            f"| {p50 / percentile(one.latencies, 0.5):.2f} | {p99 / percentile(one.latencies, 0.99):.2f} |"
        )


def print_overhead(local: list[float], remote: list[float]) -> None:
    print(f"\nDispatch overhead per job (stand-in, nothing to compute, {len(local)} jobs in a row)")
    print("| backend | per job p50 ms | per job p99 ms | p50 / local |")
    print("|---|---:|---:|---:|")
    for label, values in (("local", local), ("ray, 1 replica", remote)):
        p50 = percentile(values, 0.5)
        print(
            f"| {label} | {p50 * 1000:.2f} | {percentile(values, 0.99) * 1000:.2f} "
            f"| {p50 / percentile(local, 0.5):.1f} |"
        )
    added = percentile(remote, 0.5) - percentile(local, 0.5)
    print(f"Ray round trip added per job (p50): {added * 1000:.2f} ms")


async def ray_main(replica_counts: list[int], users: int, edits: int, steps: int, jobs: int) -> None:
    start_local_ray(max(replica_counts))
    shape = f"{users} requesters x {edits} edits"
    print_runs(
        f"Worker on Ray replicas, tiny engine on CPU ({shape}, {steps} steps, captions given; "
        f"CPUs: {os.cpu_count()}, 1 per replica)",
        await tiny_runs(replica_counts, users, edits, steps),
    )
    print_runs(
        f"Control: stand-in edits that sleep {SLEEP_STEP_S * 10 * 1000:g} ms ({shape})",
        await sleeping_runs(replica_counts, users, edits),
    )
    print_overhead(*await dispatch_overhead(jobs))
