"""pix2pix-zero on diffusers' building blocks: regularised DDIM inversion and the guided edit.

:meth:`DiffusionModels.invert` turns image latents into noise under the caption.
:meth:`DiffusionModels.edit` then denoises twice, step by step: a reconstruction under the
caption records each step's cross-attention maps, and the guided edit under caption +
direction pulls its own maps toward them at the same step. Only one step of maps is held
(66 MB at 512 px in fp16, against 3.3 GB for all 50 steps); the result is bit-identical to
passing :meth:`DiffusionModels.edit` the maps of all steps that
:meth:`DiffusionModels.reconstruct` records, for callers that want them.

The math follows diffusers' deprecated ``StableDiffusionPix2PixZeroPipeline`` (``invert`` then
``__call__``), which ``tests/test_diffusion.py`` checks we match. Intended differences:

1. The auto-correlation roll follows ``InversionConfig.roll``: pix2pix-zero's fixed rule,
   ``1..h//2-1``, by default (a roll of 0 turns the loss into "shrink the noise"; still in
   diffusers), or diffusers' ``0..h//2-1``. The pyramid stops at height <= 8 as in the
   references, or before the width would pool below one pixel, where they fail.
2. ``InversionConfig.schedule``: diffusers' ``DDIMInverseScheduler`` (default) or
   pix2pix-zero's own, the N-2 inner timesteps from alpha at ``t - 1``, the alpha the
   regularisation then uses too (see :mod:`editor.inversion` for both).
3. The direction is applied at any guidance scale, 1 included: both classifier-free halves
   (negative, caption + direction) always run, and ``uncond + g * (cond - uncond)`` is the
   directed half at ``g = 1``. The reference runs no unconditional half at ``g <= 1`` and so
   adds the direction to nothing.
4. The shared UNet is left exactly as found (see :mod:`editor.attention`). The reference
   swaps every processor for a slow non-SDPA one, unfreezes the cross-attention weights
   (their ``.grad`` fills up) and never restores anything. Inversion runs the UNet untouched
   (the reference records maps there that nothing reads).
5. Latents stay float32 outside the UNet and the attention loss is summed in float32, so
   half-precision models take their gradients and scheduler steps in full precision.
6. Image latents are the VAE posterior mean, not a sample: the same image always inverts
   to the same noise, so an inversion can be cached per image, caption and settings.
7. The reconstruction runs at batch 1 when its negative prompt equals its prompt (the
   default): its classifier-free guidance is then a no-op and its two halves' maps are
   equal, so half the work gives the same result up to rounding. ``fold_equal_halves=False``
   runs both halves, as the reference does.
8. With ``cross_attention_guidance == 0`` the guidance forward and backward are skipped:
   the reference runs them and then steps by 0.
9. Several edits of one image (other directions or strengths) share the inversion and the
   reconstruction, and their guided passes run as one batch.
10. No host work that waits for the GPU inside a step: timesteps are Python ints for the
    schedulers (their arithmetic on device tensors synchronises) and device tensors for
    the UNet, copied once per pass; rolls are drawn per step (see :mod:`editor.inversion`).
11. A ``StepCallback`` per step and a cancel ``threading.Event`` checked every step (and in
    the regularisation loop), raising :class:`~editor.types.EditCancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from editor.attention import AttentionProbe
from editor.config import InversionConfig
from editor.guidance import CrossAttentionMaps, DenoisingSteps, Timestep, UNetCounter
from editor.inversion import (
    Pix2PixZeroInverseSchedule,
    draw_shifts,
    epsilon_alpha,
    regularisation_draws,
    regularise,
    to_device,
)
from editor.types import EditSettings, InvalidInput, StepCallback, raise_if_cancelled

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer


def _report(callback: StepCallback | None, stage: str, step: int, total: int) -> None:
    if callback is not None:
        callback(stage, step, total)


class DiffusionModels:
    """The Stable Diffusion parts pix2pix-zero needs, loaded once and shared by every edit.

    Methods never leave the UNet changed. They are not safe to run from two threads at once
    (the probe swaps processors on the shared UNet); the engine runs one edit at a time.
    """

    def __init__(
        self,
        *,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler_config: Mapping[str, Any],
        device: torch.device,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config
        self.device = device
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._probe = AttentionProbe()

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device, dtype: torch.dtype) -> DiffusionModels:
        """Load from a hub id or a folder in the hub's layout (unet/, vae/, text_encoder/, ...).

        In float16 the VAE is kept in float32 when its config asks for it (``force_upcast``,
        true for SD 1.5, whose decoder overflows in half precision).
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=dtype)
            vae_config = AutoencoderKL.load_config(path, subfolder="vae")
            upcast_vae = dtype == torch.float16 and vae_config.get("force_upcast", True)
            vae = AutoencoderKL.from_pretrained(
                path, subfolder="vae", dtype=torch.float32 if upcast_vae else dtype
            )
            text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
            scheduler_config = DDIMScheduler.load_config(path, subfolder="scheduler")
        except (OSError, ValueError) as error:
            raise OSError(f"Could not load the diffusion model from {path!r}: {error}") from error
        for model in (unet, vae, text_encoder):
            model.to(device).eval().requires_grad_(False)
        return cls(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler_config=scheduler_config,
            device=torch.device(device),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        """Full-sequence CLIP embeddings ``[len(texts), 77, dim]`` in float32 (directions too)."""
        from editor.direction import encode_captions

        return encode_captions(self.tokenizer, self.text_encoder, texts).float()

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """Scaled VAE latents ``[1, 4, h/f, w/f]`` (float32) of an RGB image, its posterior mean."""
        from diffusers.image_processor import VaeImageProcessor

        pixels = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor).preprocess(image.convert("RGB"))
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        """The RGB image of one latent (scaled, as :meth:`encode_image` gives it)."""
        from diffusers.image_processor import VaeImageProcessor

        scaled = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        pixels = self.vae.decode(scaled).sample.float()
        return VaeImageProcessor(vae_scale_factor=self.vae_scale_factor).postprocess(pixels, "pil")[0]

    def compile(self, backend: str = "inductor") -> None:
        """``torch.compile`` the UNet in place, channels-last. The probe reuses its processors,
        so the graphs made on the first edit serve every later one."""
        self.unet.to(memory_format=torch.channels_last)
        self.unet.compile(backend=backend)

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The shape :meth:`encode_image` gives an image of ``size`` (width, height), without the VAE."""
        width, height = size
        factor = self.vae_scale_factor
        return (1, self.vae.config.latent_channels, height // factor, width // factor)

    def invert(
        self,
        latents: torch.Tensor,
        caption_embeds: torch.Tensor,
        *,
        steps: int,
        config: InversionConfig,
        generator: torch.Generator,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        counter: UNetCounter | None = None,
    ) -> torch.Tensor:
        """DDIM-invert image latents under their caption (guidance 1), regularising the noise.

        At each step the predicted noise takes ``config.regularisation_steps`` rounds of
        gradient steps on the auto-correlation loss (one per roll, drawn by ``config.roll``)
        and on the KL loss; only that noise tensor gets gradients. ``generator`` (a CPU
        generator) draws the rolls; ``config.schedule`` picks the inverse schedule, whose
        steps progress reports. Returns float32 noise shaped like ``latents``.
        """
        self._check_latents(latents)
        self._check_embeds("caption_embeds", caption_embeds)
        if generator.device.type != "cpu":
            raise ValueError("invert draws its rolls with a CPU torch.Generator")
        counter = UNetCounter() if counter is None else counter
        if config.schedule == "pix2pix_zero":
            scheduler: Any = Pix2PixZeroInverseSchedule(self.scheduler_config, steps, self.device)
        else:
            scheduler = self._scheduler(steps, inverse=True)
        alpha_at = epsilon_alpha(scheduler, self.device)
        prediction = scheduler.config.prediction_type
        draws = regularisation_draws(config)
        embeds = caption_embeds.to(self.device, self.dtype)
        latents = latents.to(self.device, torch.float32)
        timesteps = self._timesteps(scheduler)
        for step, (timestep, unet_timestep) in enumerate(timesteps, start=1):
            raise_if_cancelled(cancel)
            with torch.no_grad():
                noise = self._predict(latents, unet_timestep, embeds, "invert", counter)
            # Drawn while the GPU runs the forward above; one copy for the whole step.
            shifts = draw_shifts(latents.shape, generator, draws, rule=config.roll)
            noise = regularise(
                noise,
                latents,
                alpha_at(timestep),
                prediction=prediction,
                config=config,
                shifts=to_device(shifts, self.device),
                cancel=cancel,
            )
            latents = scheduler.step(noise, timestep, latents).prev_sample
            _report(callback, "invert", step, len(timesteps))
        return latents

    def reconstruct(
        self,
        inverted: torch.Tensor,
        caption_embeds: torch.Tensor,
        *,
        steps: int,
        guidance_scale: float,
        negative_embeds: torch.Tensor | None = None,
        fold_equal_halves: bool = True,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        counter: UNetCounter | None = None,
    ) -> CrossAttentionMaps:
        """Denoise the inverted noise under the caption, recording every step's cross-attention.

        ``negative_embeds`` is the classifier-free negative prompt; by default the caption
        itself, as in Pix2Pix-OnTheFly's and pix2pix-zero's code.
        """
        self._check_latents(inverted)
        embeds = self._reconstruction_embeds(caption_embeds, negative_embeds, fold_equal_halves)
        counter = UNetCounter() if counter is None else counter
        scheduler = self._scheduler(steps)
        latents = inverted.to(self.device, torch.float32) * scheduler.init_noise_sigma
        per_step: list[dict[str, torch.Tensor]] = []
        with self._probe.attached(self.unet) as probe:
            steps_of = self._steps(scheduler, probe, counter, cancel)
            for step, timestep in enumerate(self._timesteps(scheduler), start=1):
                raise_if_cancelled(cancel)
                latents, maps = steps_of.reconstruct(latents, timestep, embeds, guidance_scale)
                per_step.append(maps)
                counter.hold_maps(per_step)
                _report(callback, "reconstruct", step, steps)
        return CrossAttentionMaps(tuple(scheduler.timesteps.tolist()), tuple(per_step))

    def edit(
        self,
        inverted: torch.Tensor,
        caption_embeds: torch.Tensor,
        direction: torch.Tensor,
        *,
        settings: EditSettings,
        reference: CrossAttentionMaps | None = None,
        strengths: Sequence[float] | None = None,
        negative_embeds: torch.Tensor | None = None,
        fold_equal_halves: bool = True,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        counter: UNetCounter | None = None,
        on_clean: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Denoise under caption + strength x direction, each step first pulling the latents'
        cross-attention toward the reconstruction's by one gradient step of size
        ``settings.cross_attention_guidance``. Returns the edited latents (float32).

        Without ``reference`` the reconstruction runs interleaved, step by step: each step's
        maps are recorded, used and dropped, bit-identical to passing what :meth:`reconstruct`
        records (same caption, negative prompt, steps and guidance). ``direction`` is
        ``[K, tokens, dim]``: K edits as one batch, each with its strength (``strengths``, by
        default ``settings.direction_strength``); the result is ``[K, ...]``. The negative
        prompt is the caller's choice; by default the caption itself (Pix2Pix-OnTheFly and
        pix2pix-zero). Progress is reported as the ``edit`` stage; ``on_clean(step, steps,
        latents)`` then gets the edits' predicted clean latents (previews).
        """
        self._check_latents(inverted)
        reconstruction_embeds = self._reconstruction_embeds(
            caption_embeds, negative_embeds, fold_equal_halves
        )
        embeds = self._edit_embeds(caption_embeds, negative_embeds, direction, settings, strengths)
        counter = UNetCounter() if counter is None else counter
        scheduler = self._scheduler(settings.steps)
        timesteps = self._timesteps(scheduler)
        if reference is not None and reference.timesteps != tuple(t for t, _ in timesteps):
            raise ValueError(
                f"the attention maps were recorded over {len(reference.timesteps)} steps, "
                f"the edit runs {settings.steps}"
            )
        reconstruction = inverted.to(self.device, torch.float32) * scheduler.init_noise_sigma
        latents = torch.cat([reconstruction] * len(direction))  # keeps the layout, hence the rounding
        with self._probe.attached(self.unet) as probe:
            steps_of = self._steps(scheduler, probe, counter, cancel)
            for step, timestep in enumerate(timesteps, start=1):
                raise_if_cancelled(cancel)
                maps: Mapping[str, torch.Tensor]
                if reference is None:
                    reconstruction, maps = steps_of.reconstruct(
                        reconstruction, timestep, reconstruction_embeds, settings.guidance_scale
                    )
                    counter.hold_maps([maps])
                else:
                    maps = reference.per_step[step - 1]
                latents = steps_of.guided(
                    latents,
                    timestep,
                    embeds,
                    maps,
                    step_size=settings.cross_attention_guidance,
                    guidance_scale=settings.guidance_scale,
                )
                _report(callback, "edit", step, settings.steps)
                if on_clean is not None and steps_of.clean is not None:
                    on_clean(step, settings.steps, steps_of.clean)
        return latents

    def _scheduler(self, steps: int, *, inverse: bool = False) -> Any:
        """A fresh DDIM scheduler (inverse or not) per pass, its timesteps on the host."""
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
        scheduler = (DDIMInverseScheduler if inverse else DDIMScheduler).from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        return scheduler

    def _timesteps(self, scheduler: Any) -> list[Timestep]:
        """Python ints for the scheduler's arithmetic (on device tensors it synchronises), device
        tensors for the UNet: one host-to-device copy per pass."""
        on_device = scheduler.timesteps.to(self.device)
        return list(zip(scheduler.timesteps.tolist(), on_device, strict=True))

    def _predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        stage: str,
        counter: UNetCounter,
    ) -> torch.Tensor:
        """One counted UNet forward: float32 latents in, float32 prediction out."""
        counter.count_forward(stage, latents.shape[0])
        return self.unet(latents.to(self.dtype), timestep, encoder_hidden_states=embeds).sample.float()

    def _steps(
        self, scheduler: Any, probe: AttentionProbe, counter: UNetCounter, cancel: threading.Event | None
    ) -> DenoisingSteps:
        def predict(
            latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor, stage: str
        ) -> torch.Tensor:
            return self._predict(latents, timestep, embeds, stage, counter)

        return DenoisingSteps(predict, scheduler, probe, counter, cancel)

    def _reconstruction_embeds(
        self, caption_embeds: torch.Tensor, negative_embeds: torch.Tensor | None, fold_equal_halves: bool
    ) -> torch.Tensor:
        """``[negative, caption]``, or ``[caption]`` alone when the two are equal and may be folded."""
        self._check_embeds("caption_embeds", caption_embeds)
        if negative_embeds is not None:
            self._check_embeds("negative_embeds", negative_embeds)
        negative_embeds = caption_embeds if negative_embeds is None else negative_embeds
        if fold_equal_halves and torch.equal(negative_embeds, caption_embeds):
            return caption_embeds.to(self.device, self.dtype)
        return torch.cat([negative_embeds, caption_embeds]).to(self.device, self.dtype)

    def _edit_embeds(
        self,
        caption_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        direction: torch.Tensor,
        settings: EditSettings,
        strengths: Sequence[float] | None,
    ) -> torch.Tensor:
        """``[negative x K, caption + strength_k x direction_k for each k]`` on the device."""
        self._check_embeds("caption_embeds", caption_embeds)
        self._check_embeds("direction", direction, batched=True)
        if negative_embeds is not None:
            self._check_embeds("negative_embeds", negative_embeds)
        negative_embeds = caption_embeds if negative_embeds is None else negative_embeds
        strengths = [settings.direction_strength] * len(direction) if strengths is None else strengths
        if len(strengths) != len(direction):
            raise ValueError(f"got {len(strengths)} strengths for {len(direction)} directions")
        directed = [caption_embeds + s * row[None] for s, row in zip(strengths, direction, strict=True)]
        negatives = [negative_embeds] * len(direction)
        return torch.cat([*negatives, *directed]).to(self.device, self.dtype)

    def _check_latents(self, latents: torch.Tensor) -> None:
        channels = self.unet.config.in_channels
        if latents.ndim != 4 or latents.shape[0] != 1 or latents.shape[1] != channels:
            raise ValueError(f"expected latents of shape [1, {channels}, h, w], got {list(latents.shape)}")
        if min(latents.shape[2:]) < 4:  # the auto-correlation roll needs a height of 4
            side = 4 * self.vae_scale_factor
            raise InvalidInput(f"This image is too thin to edit: each side must be at least {side} pixels.")

    def _check_embeds(self, name: str, embeds: torch.Tensor, *, batched: bool = False) -> None:
        """``[1, tokens, dim]``; with ``batched``, any number of rows at least 1."""
        rows = max(len(embeds), 1) if batched and embeds.ndim else 1
        expected = [rows, self.tokenizer.model_max_length, self.unet.config.cross_attention_dim]
        if list(embeds.shape) != expected:
            raise ValueError(f"expected {name} of shape {expected}, got {list(embeds.shape)}")
