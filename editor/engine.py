"""Pix2Pix-OnTheFly: one edit, top to bottom, in numbered steps.

1. check the inputs (image, instruction, settings) and prepare the image;
2. caption the image with BLIP (skipped when the caller or a cached inversion knows it);
3. DDIM-invert the image under its caption (skipped with a matching cached inversion);
4. ask the language model for before/after captions (skipped with caller overrides);
5. turn them into an edit direction in CLIP text-embedding space;
6. reconstruct, recording cross-attention, then edit guided by those maps;
7. decode the latents to an image.

Every caption is measured in the text encoder's tokens and shortened at a word boundary
when it would not fit (the encoder would drop the tail silently); the result's ``notes``
say so, and say when the language model's captions were the fallback. An edit whose
before and after captions are the same within that limit is refused: it would change
nothing.

The models are loaded once and shared by every edit; the worker thread is the only
caller, so the engine holds no locks of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from editor.caption_parser import same_captions
from editor.captioner import Captioner
from editor.captions import CaptionWriter
from editor.config import EngineConfig, LimitsConfig, resolve_path
from editor.diffusion import DiffusionModels, UNetCounter
from editor.direction import ClipTokenLimit, edit_direction
from editor.images import check_instruction, load_image
from editor.types import (
    EditCounts,
    EditRequest,
    EditResult,
    EditSettings,
    InvalidInput,
    Inversion,
    StepCallback,
    raise_if_cancelled,
)

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA (the paper's setting) and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


@dataclass(frozen=True)
class PreparedInput:
    image: Image.Image
    instruction: str
    settings: EditSettings


class Editor:
    """The three models of the method behind one ``edit`` call."""

    def __init__(
        self,
        config: EngineConfig,
        defaults: EditSettings,
        captioner: Captioner,
        caption_writer: CaptionWriter,
        diffusion: DiffusionModels,
    ) -> None:
        self.config = config
        self.defaults = defaults
        self.captioner = captioner
        self.caption_writer = caption_writer
        self.diffusion = diffusion
        self.token_limit = ClipTokenLimit(diffusion.tokenizer)

    @classmethod
    def load(cls, config: EngineConfig, defaults: EditSettings) -> Editor:
        device = pick_device(config.device)
        dtype = pick_dtype(config.dtype, device)
        log.info("loading models on %s (%s)", device, str(dtype).removeprefix("torch."))
        captioner = Captioner.from_pretrained(config.model_path("captioner"), device, dtype, config.captioner)
        language_model = config.language_model
        if language_model.templates_dir:
            folder = resolve_path(config.base_dir, language_model.templates_dir)
            language_model = dataclasses.replace(language_model, templates_dir=str(folder))
        caption_writer = CaptionWriter.from_pretrained(
            config.model_path("language_model"), device, dtype, language_model
        )
        diffusion = DiffusionModels.from_pretrained(config.model_path("diffusion"), device, dtype)
        editor = cls(config, defaults, captioner, caption_writer, diffusion)
        defaults.validate(editor.template_names)
        return editor

    @property
    def template_names(self) -> tuple[str, ...]:
        return self.caption_writer.template_names

    @property
    def limits(self) -> LimitsConfig:
        """The input limits ``check_inputs`` enforces, so transports can refuse early."""
        return self.config.limits

    def inversion_key(self, settings: EditSettings) -> str:
        """What an inversion depends on besides the image and its caption."""
        facts = {
            "model": self.config.models.diffusion,
            "resolution": self.config.resolution,
            "dtype": str(self.diffusion.dtype),
            "steps": settings.steps,
            "regularisation": self.config.inversion.__dict__,
        }
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    def check_inputs(self, request: EditRequest) -> PreparedInput:
        """Raise :class:`InvalidInput` with a message for the user before any model runs."""
        if not isinstance(request.settings, EditSettings):
            raise InvalidInput("Edit settings are missing.")
        request.settings.validate(self.template_names)
        if not isinstance(request.seed, int) or not 0 <= request.seed < 2**63:
            raise InvalidInput("The seed must be a whole number between 0 and 2**63 - 1.")
        if request.caption is not None and not request.caption.strip():
            raise InvalidInput("A caption override must not be empty.")
        if request.captions is not None:
            before, after = request.captions
            if not after or not all(isinstance(c, str) and c.strip() for c in before + after):
                raise InvalidInput("Caption overrides need at least one non-empty after caption.")
        instruction = check_instruction(request.instruction, self.limits)
        image = load_image(request.image, self.limits, self.config.resolution)
        return PreparedInput(image=image, instruction=instruction, settings=request.settings)

    def edit(
        self,
        request: EditRequest,
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> EditResult:
        cancel = cancel or threading.Event()
        report = callback or _ignore_progress
        timings: dict[str, float] = {}
        counter = UNetCounter()
        notes: list[str] = []

        # 1. Check inputs.
        prepared = self.check_inputs(request)
        settings = prepared.settings
        key = self.inversion_key(settings)
        with self._timed(timings, "prepare"):
            latents = self.diffusion.encode_image(prepared.image)
        cached = self._usable_inversion(request, key, latents)

        # 2. Caption the image.
        if request.caption is not None:
            caption = request.caption.strip()
        elif cached is not None:
            caption = cached.caption
        else:
            raise_if_cancelled(cancel)
            with self._timed(timings, "caption"):
                report("caption", 0, 1)
                caption = self.captioner.caption(prepared.image)
                report("caption", 1, 1)
        caption = self._fit(caption, "image caption", notes)

        # 3. Invert the image under its caption.
        caption_embeds = self.diffusion.encode_prompt([caption])
        if cached is not None and cached.caption == caption:
            inversion = cached
        else:
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            with self._timed(timings, "invert"):
                inverted = self.diffusion.invert(
                    latents,
                    caption_embeds,
                    steps=settings.steps,
                    config=self.config.inversion,
                    generator=generator,
                    callback=report,
                    cancel=cancel,
                    counter=counter,
                )
            # Contiguous, as it comes back from bytes: the same memory layout gives the same result.
            inversion = Inversion(latents=inverted.detach().cpu().contiguous(), caption=caption, key=key)

        # 4. Before and after captions from the language model.
        lm_calls = lm_tokens = 0
        used_fallback = False
        if request.captions is not None:
            # An empty before-list stands for the image's caption (the paper's evaluation oracle).
            before = tuple(self._fit(c.strip(), "before caption", notes) for c in request.captions[0])
            after = tuple(self._fit(c.strip(), "after caption", notes) for c in request.captions[1])
            before = before or (caption,)
        else:
            with self._timed(timings, "captions"):
                report("captions", 0, 1)
                written = self.caption_writer.write(
                    prepared.instruction,
                    caption,
                    settings,
                    request.seed,
                    cancel=cancel,
                    limit=self.token_limit,
                )
                report("captions", 1, 1)
            before, after = written.before, written.after
            lm_calls, lm_tokens, used_fallback = written.generate_calls, written.tokens, written.used_fallback
            notes.extend(_caption_notes(written.used_fallback, written.generate_calls, written.shortened))

        # 5. Edit direction in CLIP text-embedding space.
        if same_captions(before, after):
            raise InvalidInput(
                "The before and after captions are the same within the text encoder's "
                f"{self.token_limit.limit} tokens, so the edit would change nothing."
            )
        with self._timed(timings, "direction"):
            direction = edit_direction(
                self.diffusion.encode_prompt(list(before)), self.diffusion.encode_prompt(list(after))
            )

        # 6. Reconstruction (records cross-attention), then the guided edit.
        raise_if_cancelled(cancel)
        with self._timed(timings, "edit"):
            edited = self.diffusion.edit(
                inversion.latents,
                caption_embeds,
                direction,
                settings=settings,
                callback=report,
                cancel=cancel,
                counter=counter,
            )

        # 7. Decode.
        with self._timed(timings, "decode"):
            report("decode", 0, 1)
            image = self.diffusion.decode(edited)
            report("decode", 1, 1)

        counts = EditCounts(
            unet_forwards=dict(counter.forwards),
            unet_batch_samples=dict(counter.batch_samples),
            unet_backwards=counter.backwards,
            lm_generate_calls=lm_calls,
            lm_tokens=lm_tokens,
        )
        return EditResult(
            image=image,
            caption=caption,
            before_captions=tuple(before),
            after_captions=tuple(after),
            inversion=inversion,
            timings=timings,
            counts=counts,
            used_fallback_captions=used_fallback,
            notes=tuple(notes),
        )

    def _fit(self, caption: str, what: str, notes: list[str]) -> str:
        """``caption`` shortened at a word boundary to the text encoder's limit, noting it."""
        fitted = self.token_limit.shorten(caption)
        limit = self.token_limit.limit
        if fitted is None:
            raise InvalidInput(
                f"The {what} cannot be shortened to {limit} text-encoder tokens at a word boundary."
            )
        if fitted != caption:
            notes.append(f"The {what} was shortened to the text encoder's {limit} tokens: “{fitted}”.")
        return fitted

    def _usable_inversion(self, request: EditRequest, key: str, latents: torch.Tensor) -> Inversion | None:
        """The request's cached inversion if it was made for this model, settings and size."""
        cached = request.inversion
        if cached is None:
            return None
        if cached.key != key or tuple(cached.latents.shape) != tuple(latents.shape):
            log.info("cached inversion does not match this edit (settings or size changed); inverting again")
            return None
        if (
            request.caption is not None
            and self.token_limit.shorten(request.caption.strip()) != cached.caption
        ):
            return None
        return cached

    @contextmanager
    def _timed(self, timings: dict[str, float], stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.diffusion.device.type == "cuda":
                torch.cuda.synchronize(self.diffusion.device)
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _caption_notes(used_fallback: bool, attempts: int, shortened: int) -> list[str]:
    """What the user should know about the language model's captions."""
    notes = []
    if used_fallback:
        notes.append(
            f"The language model gave no usable captions in {attempts} "
            f"{'try' if attempts == 1 else 'tries'}; the edit used the fallback: before = the image "
            "caption, after = the caption with the instruction appended."
        )
    if shortened:
        notes.append(f"{shortened} of the language model's captions were shortened to fit the text encoder.")
    return notes


def _ignore_progress(stage: str, step: int, total: int) -> None:
    """The default callback: nobody is watching."""
