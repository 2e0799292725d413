"""Before and around loading the models: every check that can fail fast, and errors that say what to do.

Loading the three models takes minutes and gigabytes, and ``from_pretrained`` reports a missing
model late and obscurely (a hub id without a hub retries for minutes; a mistyped folder is
called a bad repo id). So :func:`preflight` checks everything local first (prompt templates,
default settings), then where each model comes from: an existing folder, the local hub cache,
or the hub, asked once with a short timeout. Without a hub a cached model loads from its
cached folder, so nothing retries; an uncached one fails in seconds with its name and what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from editor.config import ConfigError, EngineConfig, LanguageModelConfig, resolve_path
from editor.types import EditSettings, InvalidInput

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Seconds the one question to the hub may take before it counts as unreachable.
HUB_TIMEOUT_S = 5.0

#: What a hub id looks like ("name" or "namespace/name"); anything else can only be a folder.
_HUB_ID = re.compile(r"^(?!.*\.\.)\w[\w.-]*(/\w[\w.-]*)?$")

_WHAT_TO_DO = (
    "Download it where the hub is reachable (`hf download {name}`, then copy the cache or point "
    "{where} at the downloaded folder), or try everything offline on tiny models: "
    "`make tiny` and `make run CONFIG=var/tiny/config.yaml`."
)


class ModelUnavailable(ConfigError):
    """A model named in the config cannot be loaded; the message names it and says what to do."""


@dataclass(frozen=True)
class Sources:
    """Where each model loads from (a folder or a hub id) and the language model's resolved section."""

    captioner: str
    language_model: str
    diffusion: str
    lm: LanguageModelConfig


def preflight(config: EngineConfig, defaults: EditSettings) -> Sources:
    """Run every check that needs no weights; raise :class:`ConfigError` at the first problem."""
    lm = _resolved_lm(config)
    try:
        defaults.validate(template_names(config))
    except InvalidInput as error:
        raise ConfigError(f"edit: {error}") from error
    _check_device(config.device)
    hub = _Hub()
    sources = {
        role: model_source(f"engine.models.{role}", getattr(config.models, role), config.base_dir, hub)
        for role in ("captioner", "language_model", "diffusion")
    }
    return Sources(**sources, lm=lm)


def _check_device(name: str) -> None:
    """A GPU asked for by name must be there: otherwise the failure comes after minutes of loading."""
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"engine.device is {name}, but {why}; set engine.device to auto or cpu")
    index = torch.device(name).index
    if index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"engine.device is {name}, but there are {torch.cuda.device_count()} GPU(s)")


def template_names(config: EngineConfig) -> tuple[str, ...]:
    """The prompt templates the config provides (read from their folder); ConfigError if none can be."""
    from editor.captions import SHIPPED_TEMPLATES, load_templates

    try:
        return tuple(sorted(load_templates(_resolved_lm(config).templates_dir or SHIPPED_TEMPLATES)))
    except (OSError, ValueError) as error:
        raise ConfigError(f"engine.language_model.templates_dir: {error}") from error


def _resolved_lm(config: EngineConfig) -> LanguageModelConfig:
    """The language model's section with its templates folder relative to the config file."""
    lm = config.language_model
    if not lm.templates_dir:
        return lm
    return dataclasses.replace(lm, templates_dir=str(resolve_path(config.base_dir, lm.templates_dir)))


def model_source(where: str, name: str, base_dir: str | Path, hub: _Hub | None = None) -> str:
    """The folder to load ``name`` from, or its hub id when the hub will serve it; else ModelUnavailable."""
    folder = resolve_path(base_dir, name)
    if folder.is_dir():
        return str(folder)
    if not _HUB_ID.match(name):
        raise ModelUnavailable(
            f"{where}: the model folder {folder} does not exist. Check the path "
            "(relative paths start at the config file's folder), or name a hub id."
        )
    refusal = (hub or _Hub()).ask(name)
    if refusal is None:
        return name
    cached = _cached_folder(name)
    if cached is not None:
        level = logging.INFO if refusal.offline else logging.WARNING
        log.log(level, "%s; loading %s from the local cache (%s)", refusal.why, name, cached)
        return cached
    if refusal.missing:
        raise ModelUnavailable(
            f"{where}: {refusal.why}, and there is no folder {folder}. Check the name "
            "(for a private model, `hf auth login` first)."
        )
    raise ModelUnavailable(
        f"{where}: {name} is not in the local model cache (nor a folder {folder}) and {refusal.why}. "
        + _WHAT_TO_DO.format(name=name, where=where)
    )


@dataclass(frozen=True)
class _Refusal:
    """Why the hub will not serve a model now."""

    why: str
    #: The hub says there is no such model (or none this login may see).
    missing: bool = False
    #: HF_HUB_OFFLINE asked not to use the hub at all.
    offline: bool = False


class _Hub:
    """The hub, asked about each model at most once, and not at all after it proved unreachable."""

    def __init__(self) -> None:
        self._unreachable: _Refusal | None = None

    def ask(self, name: str) -> _Refusal | None:
        """None when the hub serves ``name``; otherwise why not."""
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

        if constants.HF_HUB_OFFLINE:
            return _Refusal("HF_HUB_OFFLINE is set, so the hub is not asked", offline=True)
        if self._unreachable is not None:
            return self._unreachable
        endpoint = constants.ENDPOINT
        try:
            HfApi(endpoint=endpoint).model_info(name, timeout=HUB_TIMEOUT_S)
        except GatedRepoError:
            return _Refusal(f"{name} is gated on the hub: accept its licence there, then `hf auth login`")
        except RepositoryNotFoundError:
            return _Refusal(f"there is no model {name} on the hub ({endpoint})", missing=True)
        except HfHubHTTPError as error:
            return _Refusal(f"the hub ({endpoint}) answered: {_one_line(error)}")
        except Exception as error:  # the HTTP client's own errors: DNS, refused, timed out, TLS
            why = f"the hub ({endpoint}) cannot be reached ({type(error).__name__}: {_one_line(error)})"
            self._unreachable = _Refusal(why)
            return self._unreachable
        return None


def _cached_folder(name: str) -> str | None:
    """The snapshot folder of ``name`` in the local hub cache, if it was ever downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return str(folder)


@contextmanager
def explained(where: str, source: str) -> Iterator[None]:
    """Turn a failure to load one model (a broken or half-downloaded folder) into ModelUnavailable."""
    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError) as error:
        raise ModelUnavailable(
            f"{where}: could not load {source}: {_one_line(error)}. An interrupted download leaves "
            "files missing: download it again, or check that the folder holds the whole model."
        ) from error


def memory_summary(device: torch.device) -> str:
    """The GPU memory the loaded models hold, for the start-up line; "no GPU" on the CPU."""
    import torch

    if device.type != "cuda":
        return "no GPU (an edit takes minutes on the CPU)"
    allocated = torch.cuda.memory_allocated(device) / 2**30
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    return f"VRAM {allocated:.1f} of {total:.0f} GiB in use"


def vram_bytes() -> float:
    """GPU memory held by tensors now (0 without CUDA), for the metrics gauge."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0
    return float(torch.cuda.memory_allocated())


def _one_line(error: BaseException) -> str:
    """A library's message (often several lines) as one line, for a one-line report."""
    return " ".join(str(error).split())
