"""Editor replicas on Ray: one actor per GPU, each loading the models once (``worker.backend: ray``).

The bot keeps the queue (``editor.worker``); each replica here is driven by one of the worker's
threads, one job at a time, through three calls on its actor:

* ``edit(key, work)`` runs the edit (or a batch of variations, ``edit_many``) and answers with
  the result(s), or the exception the editor raised (so the worker explains it exactly as a local
  one), and the last progress;
* ``progress(key, seen)`` is a long poll: it answers as soon as there is a newer step or preview
  (only the latest: updates are coalesced), and at least every ``HEARTBEAT_S``, which tells a live
  replica from a hung one;
* ``cancel(key)`` sets the job's cancel event, so the engine stops within one step.

Plain actor calls, not streaming generators, because Ray Client (``ray://``) has none. A replica
whose process dies, stops answering or hits a CUDA error is killed and a new one is started; the
worker runs the lost job once more elsewhere.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray import cloudpickle
from ray.exceptions import ActorUnavailableError, NodeDiedError, ObjectLostError, RayActorError, RayError

from editor.failures import ReplicaLost, is_device_fault, is_out_of_memory, release_gpu_memory
from editor.replicas import RayConfig, ReplicaInfo, ReplicasUnavailable
from editor.types import (
    EditCancelled,
    EditRequest,
    EditResult,
    InvalidInput,
    PreviewCallback,
    StepCallback,
    SupportsEdit,
    Work,
    WorkResult,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A running job's replica answers a progress poll at least this often.
HEARTBEAT_S = 1.0
#: How often a replica's thread looks at its job's cancel event while it waits.
_CANCEL_POLL_S = 0.05
#: After a replica failed to start, the next try waits this long.
_RESTART_BACKOFF_S = 10.0
#: Errors that mean the replica (its process, node or connection) is gone, not the job's fault.
_GONE = (RayActorError, ActorUnavailableError, NodeDiedError, ObjectLostError)

Step = tuple[str, int, int]
#: What a progress poll answers: the news count, the latest step, the latest preview (PNG).
News = tuple[int, Step | None, bytes | None]


class _Silent(Exception):
    """The replica stopped answering (hung, or its node cut off)."""


@dataclass
class _Running:
    cancel: threading.Event
    seq: int = 0
    latest: Step | None = None
    preview: bytes | None = None


@dataclass(frozen=True)
class _Reply:
    """How an edit ended on the replica: its result or error, and its last progress."""

    result: WorkResult | None
    error: BaseException | None
    seq: int
    last: Step | None
    #: Per result: its inversion is its request's own, so the bot puts its object back (nothing to cache).
    reused_inversion: tuple[bool, ...] = ()
    #: The device failed (a CUDA error): this replica must be replaced, the job run elsewhere.
    device_fault: bool = False


class _EditorActor:
    """The replica's process: the models, loaded once, and the job running on them."""

    def __init__(self, load: Callable[[], SupportsEdit]) -> None:
        self._editor = load()
        self._one_at_a_time = threading.Lock()  # models are not safe to share between threads
        self._changed = threading.Condition()
        self._jobs: dict[int, _Running] = {}
        self._cancelled_early: set[int] = set()
        self._ended = 0

    def ready(self) -> tuple[str, int, tuple[str, ...]]:
        context = ray.get_runtime_context()
        gpus = tuple(str(g) for g in context.get_accelerator_ids().get("GPU", []))
        return ray.util.get_node_ip_address(), os.getpid(), gpus

    def ask(self, question: Callable[[SupportsEdit], T]) -> T:
        return question(self._editor)

    def edit(self, key: int, work: Work) -> _Reply:
        with self._changed:
            running = _Running(threading.Event())
            if key in self._cancelled_early:
                running.cancel.set()
            self._jobs[key] = running

        def report(stage: str, step: int, total: int) -> None:
            with self._changed:
                running.seq += 1
                running.latest = (stage, step, total)
                self._changed.notify_all()

        def show(png: bytes) -> None:
            with self._changed:
                running.seq += 1
                running.preview = png
                self._changed.notify_all()

        try:
            result: WorkResult
            with self._one_at_a_time:
                if isinstance(work, tuple):
                    result = tuple(
                        self._editor.edit_many(work, callback=report, cancel=running.cancel, preview=show)
                    )
                else:
                    result = self._editor.edit(work, callback=report, cancel=running.cancel, preview=show)
            pairs = zip(_as_tuple(result), _as_tuple(work), strict=True)
            reply = _Reply(
                result,
                None,
                running.seq,
                running.latest,
                reused_inversion=tuple(one.inversion is asked.inversion for one, asked in pairs),
            )
        except BaseException as error:  # even SystemExit fails only this job, as in the local worker
            reply = _failed(error, running)
        with self._changed:
            del self._jobs[key]
            self._cancelled_early.discard(key)
            self._ended = max(self._ended, key)
            self._changed.notify_all()
        return reply

    def progress(self, key: int, seen: int) -> News:
        """The step and preview once newer than ``seen``; after ``HEARTBEAT_S`` the same (I am alive)."""

        def news() -> bool:
            job = self._jobs.get(key)
            return (job is not None and job.seq > seen) or key <= self._ended

        with self._changed:
            self._changed.wait_for(news, timeout=HEARTBEAT_S)
            job = self._jobs.get(key)
            return (job.seq, job.latest, job.preview) if job is not None else (seen, None, None)

    def cancel(self, key: int) -> None:
        with self._changed:
            job = self._jobs.get(key)
            if job is not None:
                job.cancel.set()
            elif key > self._ended:  # the cancel overtook the edit call
                self._cancelled_early.add(key)


def _as_tuple(work: Any) -> tuple[Any, ...]:
    return work if isinstance(work, tuple) else (work,)


def _failed(error: BaseException, running: _Running) -> _Reply:
    if not isinstance(error, EditCancelled | InvalidInput):
        log.warning("edit failed on this replica", exc_info=error)
    if is_out_of_memory(error):
        release_gpu_memory()
    try:
        cloudpickle.dumps(error)
    except Exception:  # an error that cannot travel is told by name and message
        error = RuntimeError(f"{type(error).__name__}: {error}")
    return _Reply(None, error, running.seq, running.latest, device_fault=is_device_fault(error))


class RayReplica:
    """One replica as the worker's thread sees it: runs edits on its actor, replaces it when lost."""

    def __init__(self, index: int, spawn: Callable[[], Any], hang_timeout_s: float) -> None:
        self.index = index
        self._spawn = spawn
        self._hang_timeout_s = hang_timeout_s
        self._keys = itertools.count(1)
        self.info: ReplicaInfo | None = None
        self.last_error: str | None = None
        self._actor: Any = None
        self._starting: Any = None
        self._retry_at = 0.0
        self._start()

    def ready(self, timeout_s: float) -> bool:
        """Whether the actor is up; waits up to ``timeout_s`` for one that is starting."""
        if self.info is not None:
            return True
        if self._starting is None:  # the last start failed: try again after the back-off
            time.sleep(max(0.0, min(timeout_s, self._retry_at - time.monotonic())))
            if time.monotonic() >= self._retry_at:
                self._start()
            return False
        done, _ = ray.wait([self._starting], timeout=timeout_s)
        if not done:
            return False
        try:
            node, pid, gpus = ray.get(self._starting)
        except RayError as error:
            self.last_error = str(error).strip().splitlines()[-1]
            log.error("replica %d could not start: %s", self.index, error)
            self._kill()
            self._starting, self._retry_at = None, time.monotonic() + _RESTART_BACKOFF_S
            return False
        self.info = ReplicaInfo(self.index, node, pid, gpus)
        self._starting = None
        log.info("%s is up", self.info.describe())
        return True

    def edit(
        self,
        request: EditRequest,
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> EditResult:
        result = self._run(request, callback, cancel, preview)
        assert isinstance(result, EditResult)
        return result

    def edit_many(
        self,
        requests: Sequence[EditRequest],
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> list[EditResult]:
        """A batch (variations) in one ``edit_many`` call on the replica: one job, one inversion."""
        result = self._run(tuple(requests), callback, cancel, preview)
        assert isinstance(result, tuple)
        return list(result)

    def _run(
        self,
        work: Work,
        callback: StepCallback | None,
        cancel: threading.Event | None,
        preview: PreviewCallback | None,
    ) -> WorkResult:
        report = callback or (lambda stage, step, total: None)
        show = preview or (lambda png: None)
        cancel = cancel or threading.Event()
        try:
            reply = self._follow(next(self._keys), work, report, show, cancel)
        except (*_GONE, _Silent) as error:
            raise self._lost(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}") from error
        if reply.device_fault:
            raise self._lost(f"device fault: {reply.error}") from reply.error
        if reply.error is not None:
            raise reply.error
        assert reply.result is not None  # a reply holds a result or an error
        # The bot's own inversion objects back where the replica reused them (nothing to cache).
        restored = tuple(
            dataclasses.replace(one, inversion=asked.inversion)
            if reused and asked.inversion is not None
            else one
            for one, asked, reused in zip(
                _as_tuple(reply.result), _as_tuple(work), reply.reused_inversion, strict=True
            )
        )
        return restored if isinstance(work, tuple) else restored[0]

    def ask(self, question: Callable[[SupportsEdit], T]) -> T:
        result: T = ray.get(self._actor.ask.remote(question))
        return result

    def close(self) -> None:
        self._kill()

    def _follow(
        self, key: int, work: Work, report: StepCallback, show: PreviewCallback, cancel: threading.Event
    ) -> _Reply:
        """Wait for the edit, passing its steps and previews on and the cancel along; raise if the
        replica is gone. A preview is handed on before the step that follows it."""
        actor = self._actor
        done = actor.edit.remote(key, work)
        seen, poll, heard = 0, actor.progress.remote(key, 0), time.monotonic()
        told = False
        shown: bytes | None = None
        while True:
            if cancel.is_set() and not told:
                actor.cancel.remote(key)
                told = True
            ready, _ = ray.wait([done, poll], num_returns=1, timeout=_CANCEL_POLL_S)
            if done in ready:
                reply: _Reply = ray.get(done)
                if reply.last is not None and reply.seq > seen:
                    report(*reply.last)
                return reply
            if poll in ready:
                seq, latest, png = ray.get(poll)
                if seq > seen:
                    if png is not None and png != shown:
                        show(png)
                        shown = png
                    if latest is not None:
                        report(*latest)
                seen, poll, heard = (
                    max(seen, seq),
                    actor.progress.remote(key, max(seen, seq)),
                    time.monotonic(),
                )
            elif time.monotonic() - heard > self._hang_timeout_s:
                raise _Silent(f"no answer for {self._hang_timeout_s:g} s")

    def _lost(self, why: str) -> ReplicaLost:
        """Kill the actor, start a replacement (the thread waits for it in ``ready``)."""
        log.warning("replica %d lost (%s); starting a replacement", self.index, why)
        self._kill()
        self._start()
        return ReplicaLost(f"replica {self.index} lost: {why}")

    def _start(self) -> None:
        self.info = None
        self._actor = self._spawn()
        self._starting = self._actor.ready.remote()

    def _kill(self) -> None:
        if self._actor is not None:
            try:
                ray.kill(self._actor, no_restart=True)
            except RayError as error:  # already gone
                log.debug("replica %d: %s", self.index, error)
            self._actor = None


class RayReplicas:
    """The bot's replicas: started together, replaced one by one, closed with the bot."""

    def __init__(self, replicas: list[RayReplica], started_ray: bool) -> None:
        self.replicas = replicas
        self._started_ray = started_ray

    @classmethod
    def start(cls, config: RayConfig, load: Callable[[], SupportsEdit]) -> RayReplicas:
        """Connect (or start a local Ray), start the replicas and wait for them to load the models.

        Start-up goes on with the replicas up by ``start_timeout_s``; the others join when up.
        """
        started_ray = _connect(config)
        actor = ray.remote(_EditorActor).options(
            num_cpus=config.cpus_per_replica,
            num_gpus=config.gpus_per_replica,
            max_concurrency=4,  # edit, progress, cancel and a question at once; edits stay one at a time
            max_restarts=0,  # a lost replica is replaced by the bot, which knows which job it ran
        )
        replicas = [
            RayReplica(n, lambda: actor.remote(load), config.hang_timeout_s) for n in range(config.replicas)
        ]
        pool = cls(replicas, started_ray)
        deadline = time.monotonic() + config.start_timeout_s
        for replica in replicas:  # one wait each: a replica that failed to load is not retried here
            replica.ready(max(0.0, deadline - time.monotonic()))
        if not pool.up:
            errors = {r.last_error for r in replicas if r.last_error} or {
                f"none was up after {config.start_timeout_s:g} s (is the cluster short of GPUs or CPUs?)"
            }
            pool.close()
            raise ReplicasUnavailable(f"no editor replica could start: {'; '.join(sorted(errors))}")
        return pool

    @property
    def up(self) -> list[ReplicaInfo]:
        return [r.info for r in self.replicas if r.info is not None]

    def ask(self, question: Callable[[SupportsEdit], T]) -> T:
        """``question(editor)`` answered by the first replica that is up."""
        return next(r for r in self.replicas if r.info is not None).ask(question)

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        if self._started_ray:
            ray.shutdown()


def _connect(config: RayConfig) -> bool:
    """Join the configured cluster, or start a local Ray sized for the replicas; True if we called init."""
    if ray.is_initialized():
        return False
    if config.address is not None:
        ray.init(address=config.address, log_to_driver=True)
        return True
    cpus = max(os.cpu_count() or 1, math.ceil(config.replicas * config.cpus_per_replica))
    ray.init(num_cpus=cpus, include_dashboard=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus < config.replicas * config.gpus_per_replica:
        ray.shutdown()
        raise ReplicasUnavailable(
            f"worker.ray asks for {config.replicas} replicas x {config.gpus_per_replica:g} GPUs, "
            f"this machine has {gpus:g}; set worker.ray.gpus_per_replica: 0 to run them on CPUs"
        )
    return True
