"""Build the running parts from one config, the same way everywhere.

``bot.py``, the benchmarks and the tests all call :func:`compose`, so the store, the worker and
the service are wired once, with every knob of the config (cache size, busy timeout, caps).
With ``worker.backend: ray`` the models load on the replicas, not here: the service then checks
requests with the front a replica hands over (``editor.front``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

from editor.replicas import Replica, engine_front, load_engine, start_ray_replicas
from editor.worker import EditWorker
from sessions.config import AppConfig
from sessions.reader import Reader
from sessions.service import EditService, ServiceEditor
from sessions.store import Store
from sessions.writer import Writer

if TYPE_CHECKING:
    from editor.ray_replicas import RayReplicas
    from editor.types import SupportsEdit

    class ComposableEditor(SupportsEdit, ServiceEditor, Protocol):
        """What the worker runs and the service asks about: the Editor, or a stand-in in tests."""


@dataclass
class App:
    """The parts :func:`compose` built, for the transport to use and the caller to close."""

    config: AppConfig
    store: Store
    #: The editor (local backend) or the replicas' front (ray backend): what the service asks.
    editor: ServiceEditor
    worker: EditWorker
    service: EditService
    #: Every write to the store, on its own thread and connection (see sessions.writer).
    writer: Writer
    #: The Ray replicas compose started (ray backend), closed with the app.
    replicas: RayReplicas | None = None

    def close(self) -> None:
        if self.replicas is not None:
            self.replicas.close()
        self.writer.close()
        self.store.close()


def open_store(config: AppConfig, *, read_only: bool = False) -> Store:
    """The SQLite store with the storage section's cache budget and busy timeout."""
    storage = config.storage
    return Store.open(
        storage.database_path,
        inversion_cache_bytes=storage.inversion_cache_bytes,
        busy_timeout_s=storage.busy_timeout_s,
        read_only=read_only,
    )


def compose(
    config: AppConfig, *, editor: ComposableEditor | None = None, replicas: Sequence[Replica] | None = None
) -> App:
    """Store, editor (loaded from ``config.engine`` unless given), worker and service.

    With ``worker.backend: ray`` the replicas are started here unless given (tests give replicas
    and the editor the service asks about). The store is opened first, so a bad database path is
    reported before minutes of model loading.
    """
    store = open_store(config)
    pool: RayReplicas | None = None
    front: ServiceEditor
    runs: SupportsEdit | Sequence[Replica]
    try:
        if replicas is None and config.worker.backend == "ray":
            pool = start_ray_replicas(config.worker.ray, partial(load_engine, config.engine, config.edit))
            runs = pool.replicas
            front = editor if editor is not None else pool.ask(engine_front)
        elif replicas is not None:
            if editor is None:
                raise TypeError("compose() with replicas needs the editor the service asks about")
            runs, front = replicas, editor
        else:
            if editor is None:
                from editor.engine import Editor  # torch and the models: only when really needed

                editor = Editor.load(config.engine, config.edit)
            runs = front = editor
        writer = Writer(lambda: open_store(config))
    except BaseException:
        if pool is not None:
            pool.close()
        store.close()
        raise
    worker = EditWorker(runs, config.worker)
    reader = Reader(partial(open_store, config, read_only=True))
    service = EditService(store, writer, worker, front, reader=reader)
    return App(config, store, front, worker, service, writer, pool)
