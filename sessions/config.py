"""The application's config: one :class:`AppConfig` holding every section of ``config.yaml``.

It is read once, in ``main()`` (or a benchmark's or a test's set-up), and handed down, so no
transport parses the file again. The engine owns the schema of ``engine`` and ``edit``
(``editor.config``, so ``python -m editor`` needs nothing above it) and the worker that of
``worker``; the sections of the store, the transports and the evaluation are plain data and live
here. Unknown keys and sections are errors. Relative paths are resolved against the config file's
folder, so a config written next to its models keeps its database in ``DIR/var``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editor.config import (
    ConfigError,
    EngineConfig,
    build,
    edit_defaults,
    engine_config,
    load_yaml,
    resolve_model,
    resolve_path,
)
from editor.types import EditSettings
from editor.worker import WorkerConfig


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


@dataclass(frozen=True)
class DiscordConfig:
    """What the operator decides once; server owners change the rest with /settings at run time."""

    #: Ask for the privileged message content intent (enable it in the developer portal too).
    #: Without it the bot reads only messages that mention it, DMs, slash commands and menus.
    message_content: bool = True
    #: Channel ids where any message with an image and text is an edit request, no mention needed.
    #: Server managers can add more with /settings; these always count.
    edit_channels: tuple[str, ...] = ()
    #: Register the slash commands at start-up (a few seconds; Discord limits how often).
    sync_commands: bool = True
    #: Guild ids to register the commands in (instant); empty registers them globally.
    command_guilds: tuple[str, ...] = ()
    #: Open a thread for every new conversation started in a server channel.
    open_threads: bool = False
    #: Least seconds between two edits of one status message; besides, all statuses of a channel
    #: share Discord's budget of about 5 edits per 5 s (handlers/discord/status.py).
    progress_interval_s: float = 3.0
    #: A download of an attachment taking longer than this is given up (and the sender told).
    download_timeout_s: float = 30.0
    #: Words (whole, case-insensitive) that make an instruction refused.
    blocked_words: tuple[str, ...] = ()
    #: Regular expressions (case-insensitive) that make an instruction refused.
    blocked_patterns: tuple[str, ...] = ()
    #: Check results with Stable Diffusion's safety checker unless a server switched it off.
    safety_check: bool = False
    #: The safety checker model: a hub id or a local folder; empty means no checker at all.
    safety_model: str = "CompVis/stable-diffusion-safety-checker"
    #: Versions shown at most by /history (the most recent ones of a long lineage).
    history_limit: int = 12

    def __post_init__(self) -> None:
        if self.progress_interval_s < 0:
            raise ValueError(f"progress_interval_s must be 0 or more, got {self.progress_interval_s}")
        if not self.download_timeout_s > 0:
            raise ValueError(f"download_timeout_s must be positive, got {self.download_timeout_s}")
        if not 1 <= self.history_limit <= 50:
            raise ValueError(f"history_limit must be between 1 and 50, got {self.history_limit}")
        for channel_id in (*self.edit_channels, *self.command_guilds):
            if not channel_id.isdigit():
                raise ValueError(f"channel and guild ids are numbers (as text), got {channel_id!r}")
        for pattern in self.blocked_patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"blocked pattern {pattern!r} is not a valid regular expression: {error}"
                ) from error


@dataclass(frozen=True)
class OpsConfig:
    #: Serve /health and /metrics over HTTP.
    enabled: bool = False
    #: Where to listen; keep 127.0.0.1 unless a scraper elsewhere needs it.
    host: str = "127.0.0.1"
    port: int = 9464

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")


@dataclass(frozen=True)
class StrategyConfig:
    """One entry of ``evaluation.strategies``: edit-setting overrides and an oracle switch."""

    settings: dict[str, Any] = field(default_factory=dict)
    oracle: str = "none"
    description: str = ""
    #: Multi-turn: ``reinvert`` edits the previous output; ``compose`` adds each turn's direction
    #: to the earlier turns' on the first input's inversion (the bot's channel setting ``chain``).
    chain: str = "reinvert"


@dataclass(frozen=True)
class EvaluationConfig:
    """The ``evaluation`` section (``python -m evaluation``)."""

    #: CLIP ViT-B/32 for CLIP-I and CLIP-T, as MagicBrush's evaluation uses.
    clip: str = "openai/clip-vit-base-patch32"
    #: DINO ViT-S/16 for the DINO metric.
    dino: str = "facebook/dino-vits16"
    #: Where the metric models run: auto (CUDA when present), cpu, cuda, cuda:N.
    device: str = "auto"
    #: The seed of every edit (the paper's code uses 42).
    seed: int = 42
    #: Added to (or replacing, by name) the built-in strategies.
    strategies: dict[str, StrategyConfig] = field(default_factory=dict)
    base_dir: str = "."

    def model_path(self, name: str) -> str:
        return resolve_model(self.base_dir, getattr(self, name))


@dataclass(frozen=True)
class AppConfig:
    """Every section of ``config.yaml``, parsed and checked."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    edit: EditSettings = field(default_factory=EditSettings)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    #: The file it was read from (None when built from a mapping).
    path: Path | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base_dir: str | Path = ".") -> AppConfig:
        """Build every section from a mapping shaped like the file; ``base_dir`` anchors relative paths."""
        sections = {f.name for f in dataclasses.fields(cls) if f.name != "path"}
        unknown = sorted(set(data) - sections - {"_base_dir"})
        if unknown:
            raise ConfigError(
                f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(sections))}"
            )
        base = str(data.get("_base_dir", base_dir))
        data = {**data, "_base_dir": base}
        return cls(
            engine=engine_config(data),
            edit=edit_defaults(data),
            worker=build(WorkerConfig, data.get("worker"), "worker"),
            storage=build(StorageConfig, _with_base(data.get("storage"), base), "storage"),
            console=build(ConsoleConfig, data.get("console"), "console"),
            discord=build(DiscordConfig, _discord_section(data.get("discord"), base), "discord"),
            ops=build(OpsConfig, data.get("ops"), "ops"),
            evaluation=build(EvaluationConfig, _with_base(data.get("evaluation"), base), "evaluation"),
        )


def load_config(path: str | Path | None) -> AppConfig:
    """Read and check ``config.yaml`` (None: the defaults); :class:`ConfigError` says what is wrong."""
    data = load_yaml(path)
    return dataclasses.replace(AppConfig.from_mapping(data), path=Path(path) if path is not None else None)


def _with_base(section: Any, base_dir: str) -> Any:
    """A section whose relative paths start at the config file's folder."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return section  # ``build`` reports the wrong type with the section's name
    return {"base_dir": base_dir, **section}


def _discord_section(section: Any, base_dir: str) -> Any:
    if not isinstance(section, dict):
        return section
    section = dict(section)
    for key in ("edit_channels", "command_guilds"):
        values = section.get(key)
        if isinstance(values, list | tuple):  # ids written as YAML numbers are read as text
            section[key] = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    model = section.get("safety_model")
    if isinstance(model, str) and model.strip():
        section["safety_model"] = resolve_model(base_dir, model)
    elif isinstance(model, str):
        section["safety_model"] = ""  # documented as "no checker", not the config's folder
    return section
