"""Reading ``config.yaml``: strict, typed, loaded once in ``main()``.

Each package owns the dataclass of its own section (the engine's lives here); this
module also holds the small generic loader they share. Unknown keys are errors, so a
typo in a config file is reported instead of silently ignored. Relative paths are
resolved against the folder of the config file, and a model name is a local folder
when such a folder exists there, otherwise a hub id.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from editor.types import EditSettings

T = TypeVar("T")


class ConfigError(ValueError):
    """The config file is unreadable or a value in it is wrong; the message says where."""


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint) or (Any, Any)
        return {
            _convert(key_type, k, where): _convert(value_type, v, f"{where}.{k}") for k, v in value.items()
        }
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def find_config(path: str | Path | None) -> Path | None:
    """The config file to read: the one named, else ``config.yaml`` in the current folder when there
    is one, else None: the built-in defaults (an installed command run anywhere still works)."""
    if path is not None:
        return Path(path)
    here = Path("config.yaml")
    return here if here.is_file() else None


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    """Read a config file into a mapping with ``_base_dir`` set to its folder (None: no file, the
    defaults, with relative paths starting at the current folder)."""
    if path is None:
        return {"_base_dir": str(Path.cwd())}
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data["_base_dir"] = str(path.resolve().parent)
    return data


def resolve_path(base_dir: str | Path, value: str) -> Path:
    """A path from the config: absolute as written, relative to the config's folder otherwise."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def resolve_model(base_dir: str | Path, value: str) -> str:
    """A local folder when one exists at that path (relative to the config), else a hub id."""
    candidate = resolve_path(base_dir, value)
    return str(candidate) if candidate.is_dir() else value


@dataclass(frozen=True)
class ModelsConfig:
    captioner: str = "Salesforce/blip-image-captioning-base"
    language_model: str = "microsoft/phi-2"
    diffusion: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass(frozen=True)
class CaptionerConfig:
    """BLIP decoding. Defaults are the paper's (LAVIS ``base_coco``): the prompt is written
    before the caption and stripped after; lengths count the prompt's tokens, as there."""

    prompt: str = "a picture of "
    num_beams: int = 3
    max_length: int = 30
    min_length: int = 10


@dataclass(frozen=True)
class LanguageModelConfig:
    #: Tokens allowed per caption the model writes; the budget of an attempt is this times
    #: the captions asked for, plus the list layout (see ``editor.captions.answer_budget``).
    caption_tokens: int = 32
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    max_attempts: int = 3
    #: A folder of ``*.txt`` prompt templates; empty means the ones shipped in ``editor/prompts``.
    templates_dir: str = ""


#: Inverse DDIM schedules: diffusers' ``DDIMInverseScheduler`` or pix2pix-zero's own.
INVERSE_SCHEDULES = ("diffusers", "pix2pix_zero")
#: Auto-correlation roll rules: pix2pix-zero's (1..h//2-1) or diffusers' (0..h//2-1).
ROLL_RULES = ("pix2pix_zero", "diffusers")


@dataclass(frozen=True)
class InversionConfig:
    auto_correlation_weight: float = 20.0
    kl_weight: float = 20.0
    regularisation_steps: int = 5
    auto_correlation_rolls: int = 5
    schedule: str = "diffusers"
    roll: str = "pix2pix_zero"

    def __post_init__(self) -> None:
        if self.schedule not in INVERSE_SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(INVERSE_SCHEDULES)}, got {self.schedule!r}")
        if self.roll not in ROLL_RULES:
            raise ValueError(f"roll must be one of {', '.join(ROLL_RULES)}, got {self.roll!r}")


@dataclass(frozen=True)
class LimitsConfig:
    max_input_bytes: int = 25 * 1024 * 1024
    max_input_pixels: int = 40_000_000
    max_instruction_chars: int = 300


@dataclass(frozen=True)
class EngineConfig:
    models: ModelsConfig = field(default_factory=ModelsConfig)
    device: str = "auto"
    dtype: str = "auto"
    #: Longer side of the image the diffusion model sees (multiple of 8).
    resolution: int = 512
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: ``torch.compile`` the UNet (channels-last), TF32 for the float32 VAE, a static KV cache for the LM.
    compile: bool = False
    #: ``model``: the captioner and the language model leave the GPU while the UNet works.
    offload: str = "none"
    #: At most one preview of an edit forming per this many seconds (where a channel wants them).
    preview_interval_s: float = 3.0
    #: Where relative model paths are looked up (the config file's folder).
    base_dir: str = "."

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu") and not self.device.startswith(("cuda", "mps")):
            raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if self.resolution < 64 or self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, at least 64, got {self.resolution}")
        if self.offload not in ("none", "model"):
            raise ValueError(f"offload must be none or model, got {self.offload!r}")

    def model_path(self, name: str) -> str:
        return resolve_model(self.base_dir, getattr(self.models, name))


def engine_config(data: dict[str, Any]) -> EngineConfig:
    """The ``engine`` section of a loaded config file."""
    section = dict(data.get("engine") or {})
    section.setdefault("base_dir", data.get("_base_dir", "."))
    return build(EngineConfig, section, "engine")


def edit_defaults(data: dict[str, Any]) -> EditSettings:
    """The ``edit`` section: default settings of every edit."""
    settings = build(EditSettings, data.get("edit") or {}, "edit")
    try:
        settings.validate()
    except ValueError as error:
        raise ConfigError(f"edit: {error}") from error
    return settings
