"""Conversations: the one door through which transports reach the editing engine.

Transports (``handlers/``) import from this package only: the service, its values and errors,
and the engine's vocabulary they need to show (progress, settings, limits) are re-exported here.
"""

from editor.config import ConfigError, LimitsConfig, find_config
from editor.images import normalise_instruction
from editor.progress import Progress
from editor.types import STAGES, EditCancelled, EditSettings, InvalidInput
from sessions.compose import App, compose
from sessions.config import AppConfig, ConsoleConfig, DiscordConfig, OpsConfig, StorageConfig, load_config
from sessions.errors import JobFailed, NotAllowed, NotFound, NothingToUndo, Postponed, Rejected, UserError
from sessions.metrics import EditMetrics
from sessions.models import (
    CHAIN_MODES,
    Author,
    ChainMode,
    Job,
    JobKind,
    Place,
    Upload,
    Variation,
    VariationSet,
    Version,
)
from sessions.policy import ChannelPolicy
from sessions.service import EditService, Ticket
from sessions.store import StorageUnavailable

__all__ = [
    "CHAIN_MODES",
    "STAGES",
    "App",
    "AppConfig",
    "Author",
    "ChainMode",
    "ChannelPolicy",
    "ConfigError",
    "ConsoleConfig",
    "DiscordConfig",
    "EditCancelled",
    "EditMetrics",
    "EditService",
    "EditSettings",
    "InvalidInput",
    "Job",
    "JobFailed",
    "JobKind",
    "LimitsConfig",
    "NotAllowed",
    "NotFound",
    "NothingToUndo",
    "OpsConfig",
    "Place",
    "Postponed",
    "Progress",
    "Rejected",
    "StorageConfig",
    "StorageUnavailable",
    "Ticket",
    "Upload",
    "UserError",
    "Variation",
    "VariationSet",
    "Version",
    "compose",
    "find_config",
    "load_config",
    "normalise_instruction",
]
