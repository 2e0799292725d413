"""The ``storage`` and ``console`` sections of ``config.yaml``.

Relative paths are resolved against the config file's folder, so a config written next to
its models (``python -m editor tiny-models DIR``) keeps its database in ``DIR/var``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editor.config import build, resolve_path


@dataclass(frozen=True)
class StorageConfig:
    #: The SQLite file holding conversations, images, jobs and cached inversions.
    database: str = "var/bot.db"
    #: Where the console chat writes every result (``<version id>.png``).
    outputs: str = "outputs"
    #: Byte budget of cached inversions; the least recently used are dropped beyond it.
    inversion_cache_mb: float = 512.0
    #: How long a write waits for another connection's lock before giving up.
    busy_timeout_s: float = 10.0
    #: Where relative paths start (the config file's folder).
    base_dir: str = "."

    def __post_init__(self) -> None:
        if self.inversion_cache_mb < 0:
            raise ValueError(f"inversion_cache_mb must be 0 or more, got {self.inversion_cache_mb}")
        if self.busy_timeout_s <= 0:
            raise ValueError(f"busy_timeout_s must be positive, got {self.busy_timeout_s}")

    @property
    def database_path(self) -> Path:
        return resolve_path(self.base_dir, self.database)

    @property
    def outputs_path(self) -> Path:
        return resolve_path(self.base_dir, self.outputs)

    @property
    def inversion_cache_bytes(self) -> int:
        return int(self.inversion_cache_mb * 1024 * 1024)


@dataclass(frozen=True)
class ConsoleConfig:
    #: Name of the console conversation place; reopening the same name continues there.
    session: str = "console"
    #: Name recorded as the author of console edits (empty: the operating-system user).
    user: str = ""


def storage_config(data: dict[str, Any]) -> StorageConfig:
    """The ``storage`` section of a loaded config file."""
    section = dict(data.get("storage") or {})
    section.setdefault("base_dir", data.get("_base_dir", "."))
    return build(StorageConfig, section, "storage")


def console_config(data: dict[str, Any]) -> ConsoleConfig:
    """The ``console`` section of a loaded config file."""
    return build(ConsoleConfig, data.get("console"), "console")
