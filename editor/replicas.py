"""Where jobs run: a replica is an editor that runs one job at a time, here or on another machine.

The worker (``editor.worker``) owns the queue and one thread per replica; a replica only runs
what its thread hands it. :class:`InProcess` is the editor of this process (``backend: local``);
``editor.ray_replicas`` puts editors on Ray (``backend: ray``), configured by :class:`RayConfig`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from editor.config import EngineConfig
from editor.front import EditorFront
from editor.types import (
    EditRequest,
    EditResult,
    EditSettings,
    PreviewCallback,
    StepCallback,
    SupportsEdit,
)

if TYPE_CHECKING:
    from editor.ray_replicas import RayReplicas


@dataclass(frozen=True)
class RayConfig:
    """Section ``worker.ray``: where the replicas run with ``backend: ray`` (see the README)."""

    #: None starts a local Ray on this machine; ``auto`` joins the cluster this machine is part of
    #: (``ray start``); ``ray://head:10001`` connects through Ray Client.
    address: str | None = None
    #: Editor replicas, each loading the models once; one per GPU.
    replicas: int = 1
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    #: How long start-up waits for the replicas to load their models.
    start_timeout_s: float = 600.0
    #: A replica silent this long during a job counts as lost (hung or cut off).
    hang_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if self.gpus_per_replica < 0 or self.cpus_per_replica < 0:
            raise ValueError("gpus_per_replica and cpus_per_replica must be 0 or more")
        if not (self.start_timeout_s > 0 and self.hang_timeout_s > 0):
            raise ValueError("start_timeout_s and hang_timeout_s must be positive")


class ReplicasUnavailable(OSError):
    """No replica could start (the models failed to load, or the cluster lacks the resources)."""


@dataclass(frozen=True)
class ReplicaInfo:
    """Where a replica runs, as Ray placed it."""

    index: int
    node: str
    pid: int
    gpus: tuple[str, ...]

    def describe(self) -> str:
        device = f"GPU {', '.join(self.gpus)}" if self.gpus else "CPU"
        return f"replica {self.index} on {self.node} ({device}, pid {self.pid})"


class Replica(SupportsEdit, Protocol):
    """Where one job at a time runs: an editor, here or elsewhere, that can be lost and replaced."""

    def ready(self, timeout_s: float) -> bool:
        """Whether it can take a job, waiting up to ``timeout_s``; a lost one comes back when replaced."""
        ...


@dataclass(frozen=True)
class InProcess:
    """The editor in this process: always ready, never lost."""

    editor: SupportsEdit

    def ready(self, timeout_s: float) -> bool:
        return True

    def edit(
        self,
        request: EditRequest,
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> EditResult:
        return self.editor.edit(request, callback=callback, cancel=cancel, preview=preview)

    def edit_many(
        self,
        requests: Sequence[EditRequest],
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> list[EditResult]:
        return self.editor.edit_many(requests, callback=callback, cancel=cancel, preview=preview)


def start_ray_replicas(config: RayConfig, load: Callable[[], SupportsEdit]) -> RayReplicas:
    """The replicas of ``backend: ray``; Ray is imported here, so the local backend never loads it.

    A Ray this process starts itself (no ``address``) serves this machine only: its servers listen
    on 127.0.0.1 and it reports no usage statistics. Ray reads both settings when imported.
    """
    if config.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # "0": bind to 127.0.0.1
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from editor.ray_replicas import RayReplicas

    return RayReplicas.start(config, load)


def load_engine(engine: EngineConfig, defaults: EditSettings) -> SupportsEdit:
    """What a replica loads: the engine (imported there, not in the bot)."""
    from editor.engine import Editor

    return Editor.load(engine, defaults)


def engine_front(editor: SupportsEdit) -> EditorFront:
    """Asked of a replica: its engine's front (limits, checks, inversion key), for the bot."""
    from editor.engine import Editor

    assert isinstance(editor, Editor), "replicas of the bot run the engine"
    return editor.front
