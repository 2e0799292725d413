"""Pix2Pix-OnTheFly: one edit, or K edits of one image, top to bottom, in numbered steps.

1. check the inputs (image, instruction, settings) and prepare the image;
2. caption the image with BLIP (skipped when the caller or a cached inversion knows it);
3. DDIM-invert the image under its caption (skipped with a matching cached inversion, and
   with it the VAE encode: only the latents' shape is needed);
4. ask the language model for before/after captions, per edit (skipped with caller overrides);
5. turn them into an edit direction per edit in CLIP text-embedding space;
6. reconstruct (recording cross-attention) and edit guided by those maps, step by step, the
   K guided passes as one batch;
7. decode the latents to images.

Every caption is measured in the text encoder's tokens and shortened at a word boundary
when it would not fit (the encoder would drop the tail silently); the result's ``notes``
say so, and say when the language model's captions were the fallback. An edit whose
before and after captions are the same within that limit is refused: it would change
nothing.

The models are loaded once and shared by every edit; the worker thread is the only
caller, so the engine holds no locks of its own. ``engine.offload: model`` keeps the
captioner and the language model in host memory except during their own stage, so they
never sit on the GPU while the UNet works; ``engine.compile: true`` compiles the UNet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from editor import loading
from editor.caption_parser import same_captions
from editor.captioner import Captioner
from editor.captions import CaptionSet, CaptionWriter, caption_notes
from editor.chain import compose
from editor.config import EngineConfig, LimitsConfig
from editor.diffusion import DiffusionModels, UNetCounter
from editor.direction import ClipTokenLimit, edit_direction
from editor.front import EditorFront, PreparedInput
from editor.placement import (
    compile_for_speed,
    language_model_of,
    offloaded_modules,
    pick_device,
    pick_dtype,
    resident,
    timed,
)
from editor.preview import LatentPreview, PreviewMaker
from editor.types import (
    EditCounts,
    EditRequest,
    EditResult,
    EditSettings,
    InvalidInput,
    Inversion,
    PreviewCallback,
    StepCallback,
    raise_if_cancelled,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What every stage of one ``edit_many`` call shares."""

    report: StepCallback
    cancel: threading.Event
    timings: dict[str, float] = field(default_factory=dict)
    counter: UNetCounter = field(default_factory=UNetCounter)
    #: Notes every result carries (the image caption's fitting).
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Captions:
    """One edit's before and after captions, and what the language model spent on them."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    written: CaptionSet | None = None
    #: What the user should know about these captions (shortened, fallback).
    notes: tuple[str, ...] = ()


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
        #: The latent -> RGB map of previews, fitted to this checkpoint's VAE at load.
        self.latent_preview: LatentPreview | None = None
        self.token_limit = ClipTokenLimit(diffusion.tokenizer)

    @classmethod
    def load(cls, config: EngineConfig, defaults: EditSettings) -> Editor:
        """Check everything that needs no weights (``editor.loading``), then load the three models."""
        sources = loading.preflight(config, defaults)
        device = pick_device(config.device)
        dtype = pick_dtype(config.dtype, device)
        started = time.perf_counter()
        log.info("loading the models on %s (%s)", device, str(dtype).removeprefix("torch."))
        with loading.explained("engine.models.captioner", sources.captioner):
            captioner = Captioner.from_pretrained(sources.captioner, device, dtype, config.captioner)
        with loading.explained("engine.models.language_model", sources.language_model):
            caption_writer = CaptionWriter.from_pretrained(sources.language_model, device, dtype, sources.lm)
        if config.offload == "model":  # before the UNet arrives: a small card holds both only briefly
            for module in offloaded_modules(captioner, caption_writer):
                module.to("cpu")
        with loading.explained("engine.models.diffusion", sources.diffusion):
            diffusion = DiffusionModels.from_pretrained(sources.diffusion, device, dtype)
        editor = cls(config, defaults, captioner, caption_writer, diffusion)
        editor.latent_preview = LatentPreview.fit(diffusion)
        if config.compile:
            editor.compile()
        log.info(
            "models loaded in %.0f s on %s (%s); %s",
            time.perf_counter() - started,
            device,
            str(dtype).removeprefix("torch."),
            loading.memory_summary(device),
        )
        return editor

    @property
    def template_names(self) -> tuple[str, ...]:
        return self.caption_writer.template_names

    @property
    def front(self) -> EditorFront:
        """What the bot needs without the models; a remote replica sends it to the bot."""
        return EditorFront(
            self.config,
            self.defaults,
            self.template_names,
            str(self.diffusion.dtype),
            tokenizer=self.diffusion.tokenizer,
        )

    @property
    def limits(self) -> LimitsConfig:
        """The input limits ``check_inputs`` enforces, so transports can refuse early."""
        return self.config.limits

    @property
    def model_ids(self) -> dict[str, str]:
        """The configured id of each model (captioner, language model, diffusion), for provenance."""
        return self.front.model_ids

    def inversion_key(self, settings: EditSettings) -> str:
        """What an inversion depends on besides the image and its caption."""
        return self.front.inversion_key(settings)

    def check_captions(self, captions: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
        """Refuse captions a person wrote that CLIP would cut short or that change nothing."""
        self.front.check_captions(captions)

    def check_inputs(self, request: EditRequest) -> PreparedInput:
        """Raise :class:`InvalidInput` with a message for the user before any model runs."""
        return self.front.check_inputs(request)

    def edit(
        self,
        request: EditRequest,
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> EditResult:
        """One edit: :meth:`edit_many` of one request."""
        return self.edit_many([request], callback=callback, cancel=cancel, preview=preview)[0]

    def edit_many(
        self,
        requests: Sequence[EditRequest],
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> list[EditResult]:
        """K edits of one image that differ in their direction (instruction, language-model seed,
        direction strength, caption overrides), on one inversion and one reconstruction with
        the K guided passes as one batch: the primitive for variations.

        The first request gives what is shared (image, caption override, cached inversion, the
        inversion's seed, :data:`editor.front.SHARED_SETTINGS`); the others must agree. Each result's
        timings and UNet counts are the whole call's. When the first request asks for previews,
        ``preview(png)`` gets the K edits forming, at most one per ``engine.preview_interval_s``.
        """
        run = _Run(report=callback or _ignore_progress, cancel=cancel or threading.Event())

        # 1. Check inputs.
        prepared = self.front.check_batch(requests)
        first, image, settings = requests[0], prepared[0].image, prepared[0].settings
        key = self.inversion_key(settings)
        cached = self._usable_inversion(first, key, self.diffusion.latent_shape(image.size))

        # 2. Caption the image.
        if first.caption is not None:
            caption = first.caption.strip()
        elif cached is not None:
            caption = cached.caption
        else:
            caption = self._caption(image, run)
        caption = self._fit(caption, "image caption", run.notes)

        # 3. Invert the image under its caption (a cached inversion needs no VAE encode).
        caption_embeds = self.diffusion.encode_prompt([caption])
        if cached is not None and cached.caption == caption:
            inversion = cached
        else:
            inversion = self._invert(image, caption, caption_embeds, first, run)

        # 4. Before and after captions from the language model, per edit.
        captions = [
            self._captions(request, item, caption, run, index=index, total=len(requests))
            for index, (request, item) in enumerate(zip(requests, prepared, strict=True))
        ]

        # 5. Edit directions in CLIP text-embedding space.
        encode = self.diffusion.encode_prompt
        with timed(run.timings, "direction", self.diffusion.device):
            directions = torch.cat(
                [edit_direction(encode(list(c.before)), encode(list(c.after))) for c in captions]
            )
            # Chain mode compose: the earlier turns' directions join each edit's.
            own_strengths = [item.settings.direction_strength for item in prepared]
            directions, strengths = compose(directions, own_strengths, [r.prior for r in requests], encode)

        # 6. Reconstruction (records cross-attention) and the guided edits, step by step.
        raise_if_cancelled(run.cancel)
        with timed(run.timings, "edit", self.diffusion.device):
            edited = self.diffusion.edit(
                inversion.latents,
                caption_embeds,
                directions,
                settings=settings,
                strengths=strengths,
                callback=run.report,
                cancel=run.cancel,
                counter=run.counter,
                on_clean=self._preview_maker(first, preview),
            )

        # 7. Decode.
        pictures = []
        with timed(run.timings, "decode", self.diffusion.device):
            for index in range(len(requests)):
                run.report("decode", index, len(requests))
                pictures.append(self.diffusion.decode(edited[index : index + 1]))
            run.report("decode", len(requests), len(requests))

        return [
            _result(picture, caption, item, inversion, run)
            for picture, item in zip(pictures, captions, strict=True)
        ]

    def _preview_maker(self, request: EditRequest, preview: PreviewCallback | None) -> PreviewMaker | None:
        """Previews of this edit, when its request wants them and someone is listening."""
        if preview is None or not request.previews:
            return None
        if self.latent_preview is None:  # an Editor made without load(): fit on first use
            self.latent_preview = LatentPreview.fit(self.diffusion)
        return PreviewMaker(self.latent_preview, self.config.preview_interval_s, preview)

    def _caption(self, image: Image.Image, run: _Run) -> str:
        raise_if_cancelled(run.cancel)
        with (
            timed(run.timings, "caption", self.diffusion.device),
            resident(self.captioner.model, self.diffusion.device, self.config.offload),
        ):
            run.report("caption", 0, 1)
            caption = self.captioner.caption(image)
            run.report("caption", 1, 1)
        return caption

    def _invert(
        self, image: Image.Image, caption: str, caption_embeds: torch.Tensor, request: EditRequest, run: _Run
    ) -> Inversion:
        """Encode and invert the image; the request's seed draws the regularisation's rolls."""
        settings = request.settings
        with timed(run.timings, "prepare", self.diffusion.device):
            latents = self.diffusion.encode_image(image)
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        with timed(run.timings, "invert", self.diffusion.device):
            inverted = self.diffusion.invert(
                latents,
                caption_embeds,
                steps=settings.steps,
                config=self.config.inversion,
                generator=generator,
                callback=run.report,
                cancel=run.cancel,
                counter=run.counter,
            )
        # Contiguous, as it comes back from bytes: the same memory layout gives the same result.
        key = self.inversion_key(settings)
        return Inversion(latents=inverted.detach().cpu().contiguous(), caption=caption, key=key)

    def _captions(
        self,
        request: EditRequest,
        prepared: PreparedInput,
        caption: str,
        run: _Run,
        *,
        index: int,
        total: int,
    ) -> _Captions:
        """The caller's caption overrides, or the language model's captions for this edit, fitted
        to the text encoder; refused when the two sides are the same within its limit."""
        if request.captions is not None:
            notes: list[str] = []
            # An empty before-list stands for the image's caption (the paper's evaluation oracle).
            before = tuple(self._fit(c.strip(), "before caption", notes) for c in request.captions[0])
            after = tuple(self._fit(c.strip(), "after caption", notes) for c in request.captions[1])
            captions = _Captions(before or (caption,), after, notes=tuple(notes))
        else:
            lm = language_model_of(self.caption_writer)
            with (
                timed(run.timings, "captions", self.diffusion.device),
                resident(lm, self.diffusion.device, self.config.offload),
            ):
                run.report("captions", index, total)
                written = self.caption_writer.write(
                    prepared.instruction,
                    caption,
                    prepared.settings,
                    request.seed,
                    cancel=run.cancel,
                    limit=self.token_limit,
                )
                run.report("captions", index + 1, total)
            notes = caption_notes(written.used_fallback, written.generate_calls, written.shortened)
            captions = _Captions(written.before, written.after, written, tuple(notes))
        if same_captions(captions.before, captions.after):
            raise InvalidInput(
                "The before and after captions are the same within the text encoder's "
                f"{self.token_limit.limit} tokens, so the edit would change nothing."
            )
        return captions

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

    def compile(self, backend: str = "inductor") -> None:
        """``engine.compile``: the UNet compiled and channels-last; on CUDA, TF32 matmuls and
        convolutions for the float32 VAE; a static KV cache for the language model (on CUDA
        transformers then compiles its decoding step). Graphs are made on the first edit."""
        compile_for_speed(self.diffusion, language_model_of(self.caption_writer), backend)

    def _usable_inversion(self, request: EditRequest, key: str, shape: tuple[int, ...]) -> Inversion | None:
        """The request's cached inversion if it was made for this model, settings and size."""
        cached = request.inversion
        if cached is None:
            return None
        if cached.key != key or tuple(cached.latents.shape) != shape:
            log.info("cached inversion does not match this edit (settings or size changed); inverting again")
            return None
        if (
            request.caption is not None
            and self.token_limit.shorten(request.caption.strip()) != cached.caption
        ):
            return None
        return cached


def _result(
    image: Image.Image, caption: str, captions: _Captions, inversion: Inversion, run: _Run
) -> EditResult:
    written = captions.written
    counts = EditCounts(
        unet_forwards=dict(run.counter.forwards),
        unet_batch_samples=dict(run.counter.batch_samples),
        unet_backwards=run.counter.backwards,
        lm_generate_calls=0 if written is None else written.generate_calls,
        lm_tokens=0 if written is None else written.tokens,
    )
    return EditResult(
        image=image,
        caption=caption,
        before_captions=captions.before,
        after_captions=captions.after,
        inversion=inversion,
        timings=dict(run.timings),
        counts=counts,
        used_fallback_captions=written is not None and written.used_fallback,
        notes=(*run.notes, *captions.notes),
    )


def _ignore_progress(stage: str, step: int, total: int) -> None:
    """The default callback: nobody is watching."""
