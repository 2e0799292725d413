"""Build the running parts from one config, the same way everywhere.

``bot.py``, the benchmarks and the tests all call :func:`compose`, so the store, the worker and
the service are wired once, with every knob of the config (cache size, busy timeout, caps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from editor.worker import EditWorker
from sessions.config import AppConfig
from sessions.service import EditService
from sessions.store import Store

if TYPE_CHECKING:
    from editor.types import SupportsEdit
    from sessions.service import ServiceEditor

    class ComposableEditor(SupportsEdit, ServiceEditor, Protocol):
        """What the worker runs and the service asks about: the Editor, or a stand-in in tests."""


@dataclass
class App:
    """The parts :func:`compose` built, for the transport to use and the caller to close."""

    config: AppConfig
    store: Store
    editor: ComposableEditor
    worker: EditWorker
    service: EditService

    def close(self) -> None:
        self.store.close()


def open_store(config: AppConfig) -> Store:
    """The SQLite store with the storage section's cache budget and busy timeout."""
    storage = config.storage
    return Store.open(
        storage.database_path,
        inversion_cache_bytes=storage.inversion_cache_bytes,
        busy_timeout_s=storage.busy_timeout_s,
    )


def compose(config: AppConfig, *, editor: ComposableEditor | None = None) -> App:
    """Store, editor (loaded from ``config.engine`` unless given), worker and service.

    The store is opened first, so a bad database path is reported before minutes of model loading.
    """
    store = open_store(config)
    try:
        if editor is None:
            from editor.engine import Editor  # torch and the models: only when really needed

            editor = Editor.load(config.engine, config.edit)
    except BaseException:
        store.close()
        raise
    worker = EditWorker(editor, config.worker)
    return App(config, store, editor, worker, EditService(store, worker, editor))
