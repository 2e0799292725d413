"""The ``discord`` and ``ops`` sections of ``config.yaml``.

Server owners change channel defaults, edit channels and the safety check with /settings at
run time; this file holds what the operator decides once: intents, command scope, limits on
instructions and the defaults the /settings values start from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from editor.config import ConfigError, build, resolve_model


@dataclass(frozen=True)
class DiscordConfig:
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
    #: Least seconds between two edits of a status message (Discord rate-limits edits).
    progress_interval_s: float = 1.5
    #: Words (whole, case-insensitive) that make an instruction refused.
    blocked_words: tuple[str, ...] = ()
    #: Regular expressions (case-insensitive) that make an instruction refused.
    blocked_patterns: tuple[str, ...] = ()
    #: Check results with Stable Diffusion's safety checker unless a server switched it off.
    safety_check: bool = False
    #: The safety checker model: a hub id or a local folder with the model and its image processor.
    safety_model: str = "CompVis/stable-diffusion-safety-checker"
    #: Versions shown at most by /history (the most recent ones of a long lineage).
    history_limit: int = 12

    def __post_init__(self) -> None:
        if self.progress_interval_s < 0:
            raise ValueError(f"progress_interval_s must be 0 or more, got {self.progress_interval_s}")
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


def _as_text_ids(section: dict[str, Any], key: str) -> None:
    """Ids written as YAML numbers are read as text, the form the rest of the bot uses."""
    values = section.get(key)
    if isinstance(values, list | tuple):
        section[key] = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]


def discord_config(data: dict[str, Any]) -> DiscordConfig:
    """The ``discord`` section of a loaded config file."""
    section = dict(data.get("discord") or {})
    for key in ("edit_channels", "command_guilds"):
        _as_text_ids(section, key)
    if isinstance(section.get("safety_model"), str):
        section["safety_model"] = resolve_model(data.get("_base_dir", "."), section["safety_model"])
    return build(DiscordConfig, section, "discord")


def ops_config(data: dict[str, Any]) -> OpsConfig:
    """The ``ops`` section of a loaded config file."""
    return build(OpsConfig, data.get("ops") or {}, "ops")


__all__ = ["ConfigError", "DiscordConfig", "OpsConfig", "discord_config", "ops_config"]
