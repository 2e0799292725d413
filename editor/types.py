"""The engine's public values: what an edit asks for, what it gives back, and its errors.

Everything here is plain data (frozen dataclasses) so that jobs can cross threads, be
stored by the conversation layer and be compared in tests without touching a model.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import threading

    import torch
    from PIL import Image

#: Stages reported to a :data:`StepCallback`, in the order an edit runs them.
STAGES = ("caption", "invert", "captions", "reconstruct", "edit", "decode")

#: ``callback(stage, step, total)``; ``step`` counts up to ``total`` within a stage (0 = started).
StepCallback = Callable[[str, int, int], None]
#: ``preview(png)``: a small picture of the edit forming (requests with ``previews``).
PreviewCallback = Callable[[bytes], None]


class InvalidInput(ValueError):
    """The request itself is wrong (bad image, empty instruction, settings out of range).

    The message is written for the person who sent the request and is safe to show them.
    """


class EditCancelled(Exception):
    """The edit was stopped on request; raised within one step of the cancel."""


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    """The one cancel check of every stage (engine, inversion, language model), one message."""
    if cancel is not None and cancel.is_set():
        raise EditCancelled("The edit was cancelled.")


@dataclass(frozen=True)
class EditSettings:
    """The knobs of one edit. Defaults follow pix2pix-zero; ``config.yaml`` overrides them."""

    steps: int = 50
    guidance_scale: float = 5.0
    cross_attention_guidance: float = 0.1
    direction_strength: float = 1.0
    num_captions: int = 5
    caption_lock: bool = True
    template: str = "few_shot"

    #: Valid ranges, checked by :meth:`validate`; the bot's /settings uses them too.
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "steps": (1, 200),
        "guidance_scale": (1.0, 20.0),
        "cross_attention_guidance": (0.0, 1.0),
        "direction_strength": (0.0, 5.0),
        "num_captions": (1, 16),
    }

    def validate(self, templates: tuple[str, ...] | None = None) -> None:
        """Raise :class:`InvalidInput` naming the first setting out of range."""
        for name, (low, high) in self.LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"Setting `{name}` must be a number, got {value!r}.")
            if not low <= value <= high:
                raise InvalidInput(f"Setting `{name}` must be between {low} and {high}, got {value}.")
        if not isinstance(self.steps, int):
            raise InvalidInput(f"Setting `steps` must be a whole number, got {self.steps!r}.")
        if not isinstance(self.num_captions, int):
            raise InvalidInput(f"Setting `num_captions` must be a whole number, got {self.num_captions!r}.")
        if templates is not None and self.template not in templates:
            raise InvalidInput(f"Unknown prompt template {self.template!r}; known: {', '.join(templates)}.")

    def replace(self, **changes: Any) -> EditSettings:
        return dataclasses.replace(self, **changes)

    def scaled(self, factor: float) -> EditSettings:
        """The same edit pushed harder (factor > 1) or softer (factor < 1), kept in range."""
        low_s, high_s = self.LIMITS["direction_strength"]
        low_g, high_g = self.LIMITS["guidance_scale"]
        return self.replace(
            direction_strength=round(min(high_s, max(low_s, self.direction_strength * factor)), 4),
            guidance_scale=round(min(high_g, max(low_g, 1.0 + (self.guidance_scale - 1.0) * factor)), 4),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"Unknown edit setting(s): {', '.join(sorted(unknown))}.")
        return cls(**data)


@dataclass(frozen=True)
class Inversion:
    """The DDIM-inverted noise of one image under its caption.

    It depends only on the image, its caption, the diffusion model and the inversion
    settings (``key``), never on the instruction, so every later edit of the same image
    version can reuse it and skip the inversion's UNet calls.
    """

    latents: torch.Tensor
    caption: str
    key: str

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        latents = self.latents.detach().to("cpu").contiguous()
        return save({"latents": latents}, metadata={"caption": self.caption, "key": self.key})

    @classmethod
    def from_bytes(cls, data: bytes) -> Inversion:
        from safetensors.torch import load

        try:
            tensors = load(data)
            # The safetensors header is an 8-byte length then JSON; metadata lives there.
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
            return cls(latents=tensors["latents"], caption=metadata["caption"], key=metadata["key"])
        except Exception as error:  # any corruption means "no usable cache", said plainly
            raise ValueError(f"Not a serialised inversion: {error}") from error


@dataclass(frozen=True)
class PriorEdit:
    """An earlier turn of a chain: how it was read (its captions) and how strongly it applied."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    strength: float


@dataclass(frozen=True)
class EditRequest:
    """One edit: an image (or its bytes), an instruction and how to apply it.

    ``inversion`` skips the inversion when it matches the image, caption and settings;
    ``caption`` overrides BLIP; ``captions`` (before, after) overrides the language model,
    an empty before meaning the image's caption (the paper's evaluation oracle).
    ``prior`` (chain mode ``compose``): the earlier turns of a chain, whose directions are
    added to this edit's and applied with it to ``image``, the chain's first image.
    ``previews``: hand previews of the edit forming to the caller's preview callback.
    """

    image: Image.Image | bytes
    instruction: str
    settings: EditSettings = field(default_factory=EditSettings)
    seed: int = 0
    inversion: Inversion | None = None
    caption: str | None = None
    captions: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    prior: tuple[PriorEdit, ...] = ()
    previews: bool = False


@dataclass(frozen=True)
class EditCounts:
    """Work done by one edit, counted by the engine itself (not estimated)."""

    unet_forwards: dict[str, int] = field(default_factory=dict)
    unet_batch_samples: dict[str, int] = field(default_factory=dict)
    unet_backwards: int = 0
    lm_generate_calls: int = 0
    lm_tokens: int = 0

    @property
    def total_unet_forwards(self) -> int:
        return sum(self.unet_forwards.values())


@dataclass(frozen=True)
class EditResult:
    image: Image.Image
    caption: str
    before_captions: tuple[str, ...]
    after_captions: tuple[str, ...]
    inversion: Inversion
    timings: dict[str, float]
    counts: EditCounts
    #: True when the language model failed and the fallback captions were used.
    used_fallback_captions: bool = False
    #: Sentences for the person who asked: the fallback captions were used, a caption was
    #: shortened to fit the text encoder. Empty when there is nothing to say.
    notes: tuple[str, ...] = ()

    def image_png(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


#: What one job of the worker runs: one edit, or K edits of one image made together (variations).
Work = EditRequest | tuple[EditRequest, ...]
#: What that job gives back: one result, or one per request of the batch, in order.
WorkResult = EditResult | tuple[EditResult, ...]


class SupportsEdit(Protocol):
    """What runs edits: the engine's ``Editor``, or a stand-in in tests and benchmarks."""

    def edit(
        self,
        request: EditRequest,
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> EditResult: ...

    def edit_many(
        self,
        requests: Sequence[EditRequest],
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> list[EditResult]: ...
