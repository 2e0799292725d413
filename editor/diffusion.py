"""pix2pix-zero on diffusers' building blocks: regularised DDIM inversion and the guided edit.

Three stages, each its own method so that a caller can cache what does not depend on the
instruction: :meth:`DiffusionModels.invert` (image latents -> noise, under the caption),
:meth:`DiffusionModels.reconstruct` (denoise under the caption, recording the cross-attention
maps of every step) and :meth:`DiffusionModels.edit` (denoise under caption + direction,
pulling each step's cross-attention maps toward the recorded ones, which it records first
when not given them).

The math follows diffusers' deprecated ``StableDiffusionPix2PixZeroPipeline`` (``invert`` then
``__call__``), which ``tests/test_diffusion.py`` checks we match. Intended differences:

1. The auto-correlation roll follows pix2pix-zero's fixed rule by default, ``1..h//2-1``
   (a roll of 0 turns the loss into "shrink the noise"; fixed upstream in 2024, still in
   diffusers); ``InversionConfig.roll = "diffusers"`` draws ``0..h//2-1`` like diffusers.
   Both take the bound from the height and stop the pyramid at height <= 8, like the
   references; the pyramid also stops before the width would be pooled below one pixel,
   where the references fail.
2. ``InversionConfig.schedule`` picks the inverse DDIM schedule: diffusers'
   ``DDIMInverseScheduler`` (default), or pix2pix-zero's own (the paper's code), which runs
   the N-2 inner timesteps and takes alpha at ``t - 1`` (:class:`Pix2PixZeroInverseSchedule`).
3. The direction is applied at any guidance scale, 1 included: both classifier-free halves
   (negative, caption + direction) always run, and ``uncond + g * (cond - uncond)`` is the
   directed half at ``g = 1``. The reference runs no unconditional half at ``g <= 1`` and so
   adds the direction to nothing.
4. The shared UNet is left exactly as found: only cross-attention layers get a probing
   processor (every other layer keeps its own, SDPA by default), the probe falls back to the
   layer's own processor on forwards that neither record nor compare, parameters are frozen
   during the run, and processors and ``requires_grad`` flags are restored in ``finally``.
   The reference swaps every processor for a slow non-SDPA one, unfreezes the
   cross-attention weights (their ``.grad`` fills up) and never restores anything. Inversion
   runs the UNet untouched (the reference records maps there that nothing reads).
5. Latents stay float32 outside the UNet and the attention loss is summed in float32, so
   half-precision models take their gradients and scheduler steps in full precision.
6. Image latents are the VAE posterior mean, not a sample: the same image always inverts
   to the same noise, so an inversion can be cached per image, caption and settings.
7. Recorded attention maps stay on the compute device and are returned, not popped, so a
   later edit can reuse them; the reference copies them to the CPU and drops them.
8. With ``cross_attention_guidance == 0`` the guidance forward and backward are skipped:
   the reference runs them and then steps by 0.
9. A ``StepCallback`` per step and a cancel ``threading.Event`` checked every step (and in
   the regularisation loop), raising :class:`~editor.types.EditCancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from editor.config import ROLL_RULES, InversionConfig
from editor.types import EditSettings, InvalidInput, StepCallback, raise_if_cancelled

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import Attention
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

#: The auto-correlation pyramid stops once the height is this small (pix2pix-zero: 8x8).
PYRAMID_MIN_SIDE = 8


@dataclass
class UNetCounter:
    """UNet work done so far, counted at each call (the engine turns it into ``EditCounts``)."""

    forwards: dict[str, int] = field(default_factory=dict)
    batch_samples: dict[str, int] = field(default_factory=dict)
    backwards: int = 0

    def count_forward(self, stage: str, batch: int) -> None:
        self.forwards[stage] = self.forwards.get(stage, 0) + 1
        self.batch_samples[stage] = self.batch_samples.get(stage, 0) + batch

    def count_backward(self) -> None:
        self.backwards += 1


@dataclass(frozen=True)
class CrossAttentionMaps:
    """The reconstruction's cross-attention probabilities: one ``{layer: probs}`` per step.

    They depend on the inverted noise, the caption, the negative prompt, the steps and the
    guidance scale, never on the instruction, so every edit of one image version can share
    them. Each tensor is ``[2 * heads, queries, tokens]`` (negative half, then caption half).
    """

    timesteps: tuple[int, ...]
    per_step: tuple[Mapping[str, torch.Tensor], ...]


def draw_roll(size: int, generator: torch.Generator, rule: str = "pix2pix_zero") -> int:
    """A random shift for the auto-correlation loss, bounded by a side of ``size``.

    ``pix2pix_zero``: ``1..size//2-1``, never 0 (which would compare the noise with itself).
    ``diffusers``: ``0..size//2-1``, replaying diffusers' ``torch.randint(size // 2)``.
    """
    if rule not in ROLL_RULES:
        raise ValueError(f"unknown roll rule {rule!r}; known: {', '.join(ROLL_RULES)}")
    low = 1 if rule == "pix2pix_zero" else 0
    if size // 2 <= low:
        raise ValueError(f"cannot draw a {rule} roll for a side of {size}")
    return int(torch.randint(low, size // 2, (1,), generator=generator).item())


def _roll_each(maps: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.roll`` of every ``maps[k]`` (shape ``[K, H, W]``) by its own ``shifts[k]``."""
    size = maps.shape[dim]
    positions = torch.arange(size, device=maps.device)
    index = (positions[None, :] - shifts[:, None]) % size
    index = index[:, :, None] if dim == 1 else index[:, None, :]
    return maps.gather(dim, index.expand_as(maps))


def auto_correlation_loss(
    noise: torch.Tensor, generator: torch.Generator, rule: str = "pix2pix_zero"
) -> torch.Tensor:
    """pix2pix-zero's auto-correlation penalty over an average-pooled pyramid of each channel.

    Each channel at each level is multiplied by itself rolled along height and along width
    by one shift drawn from the level's height; the squared means are summed. The pyramid
    halves until the height is at most 8 (or the width could not be halved). Shifts are
    drawn in the reference's order (sample, channel, level) so its random stream can be
    replayed; all channels are computed at once.
    """
    batch, channels, height, width = noise.shape
    levels: list[tuple[int, int]] = [(height, width)]
    while levels[-1][0] > PYRAMID_MIN_SIDE and levels[-1][1] >= 2:
        levels.append((levels[-1][0] // 2, levels[-1][1] // 2))
    draws = [[draw_roll(level[0], generator, rule) for level in levels] for _ in range(batch * channels)]
    maps = noise.reshape(batch * channels, height, width)
    loss = noise.new_zeros(())
    for level in range(len(levels)):
        if level:
            maps = torch.nn.functional.avg_pool2d(maps[:, None], kernel_size=2)[:, 0]
        shifts = torch.tensor([row[level] for row in draws], device=noise.device)
        for dim in (1, 2):
            loss = loss + (maps * _roll_each(maps, shifts, dim)).mean((1, 2)).pow(2).sum()
    return loss


def kl_divergence(noise: torch.Tensor) -> torch.Tensor:
    """KL-style penalty pulling the noise's mean to 0 and variance to 1 (pix2pix-zero's)."""
    mean = noise.mean()
    variance = noise.var()
    return variance + mean**2 - 1 - torch.log(variance + 1e-7)


def _report(callback: StepCallback | None, stage: str, step: int, total: int) -> None:
    if callback is not None:
        callback(stage, step, total)


def _guide(noise: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance over a batch of (negative half, conditional half)."""
    unconditional, conditional = noise.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


class _AttentionProbe:
    """What the probed cross-attention layers do on the current forward.

    ``recording`` set: store each layer's probabilities there. ``reference`` set: add the
    squared distance to those maps to ``loss``. Neither: run the layer's own processor.
    """

    def __init__(self) -> None:
        self.recording: dict[str, torch.Tensor] | None = None
        self.reference: Mapping[str, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None


class _ProbedCrossAttention:
    """A cross-attention processor that exposes its attention probabilities to a probe."""

    def __init__(self, name: str, probe: _AttentionProbe, own_processor: Callable[..., torch.Tensor]) -> None:
        self.name = name
        self.probe = probe
        self.own_processor = own_processor

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        probe = self.probe
        if probe.recording is None and probe.reference is None:
            return self.own_processor(
                attn,
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
            )
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        batch_size, key_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if probe.recording is not None:
            probe.recording[self.name] = probs.detach()
        elif probe.reference is not None:
            target = probe.reference[self.name]
            layer_loss = (probs.float() - target.float()).pow(2).sum((1, 2)).mean(0)
            probe.loss = layer_loss if probe.loss is None else probe.loss + layer_loss
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](hidden_states))


def _check_probe_supports(name: str, attn: Attention) -> None:
    """The probe computes plain transformer-block cross-attention; refuse anything fancier."""
    if (
        attn.group_norm is not None
        or attn.spatial_norm is not None
        or attn.residual_connection
        or attn.rescale_output_factor != 1.0
    ):
        raise ValueError(f"cross-attention layer {name} uses features the attention probe does not support")


class Pix2PixZeroInverseSchedule:
    """pix2pix-zero's own inverse DDIM schedule, which the paper's code inverts with.

    Of the sampler's N ascending timesteps ``k * (1000 // N) + steps_offset`` it runs the
    N-2 inner ones (``timesteps.flip(0)[1:-1]``), and each step moves the latent from alpha
    at ``t - 1`` to alpha at ``t - 1 + 1000 // N``: the image latent is taken as already at
    the first inner step. diffusers' ``DDIMInverseScheduler`` instead runs all N steps, from
    alpha 1 up to the edit's first timestep. Epsilon-predicting models only, as there.
    """

    def __init__(self, scheduler_config: Mapping[str, Any], steps: int, device: torch.device) -> None:
        from diffusers import DDIMScheduler

        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
        sampler = DDIMScheduler.from_config(scheduler_config)
        if sampler.config.prediction_type != "epsilon":
            raise ValueError("pix2pix-zero's inverse schedule supports epsilon-predicting models only")
        self.config = sampler.config
        self.stride = sampler.config.num_train_timesteps // steps
        self.alphas_cumprod = sampler.alphas_cumprod.to(device)
        ascending = torch.arange(steps, device=device) * self.stride + sampler.config.steps_offset
        self.timesteps = ascending[1:-1]

    def step(self, noise: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> DDIMSchedulerOutput:
        """One DDIM step up the schedule: from alpha at ``t - 1`` to ``t - 1 + stride``."""
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

        alpha = self.alphas_cumprod[int(timestep) - 1]
        alpha_next = self.alphas_cumprod[int(timestep) - 1 + self.stride]
        original = (latents - (1 - alpha).sqrt() * noise) / alpha.sqrt()
        prev_sample = alpha_next.sqrt() * original + (1 - alpha_next).sqrt() * noise
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=original)


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
        generator) draws the rolls; ``config.schedule`` picks the inverse schedule.
        Returns float32 noise shaped like ``latents``.
        """
        self._check_latents(latents)
        self._check_embeds("caption_embeds", caption_embeds)
        if generator.device.type != "cpu":
            raise ValueError("invert draws its rolls with a CPU torch.Generator")
        counter = UNetCounter() if counter is None else counter
        if config.schedule == "pix2pix_zero":
            scheduler = Pix2PixZeroInverseSchedule(self.scheduler_config, steps, self.device)
        else:
            scheduler = self._scheduler(steps, inverse=True)
        embeds = caption_embeds.to(self.device, self.dtype)
        latents = latents.to(self.device, torch.float32)
        total = len(scheduler.timesteps)
        for step, timestep in enumerate(scheduler.timesteps, start=1):
            raise_if_cancelled(cancel)
            with torch.no_grad():
                noise = self._predict(latents, timestep, embeds, "invert", counter)
            noise = self._regularise(
                noise,
                latents,
                timestep,
                scheduler=scheduler,
                config=config,
                generator=generator,
                cancel=cancel,
            )
            latents = scheduler.step(noise, timestep, latents).prev_sample
            _report(callback, "invert", step, total)
        return latents

    def reconstruct(
        self,
        inverted: torch.Tensor,
        caption_embeds: torch.Tensor,
        *,
        steps: int,
        guidance_scale: float,
        negative_embeds: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        counter: UNetCounter | None = None,
    ) -> CrossAttentionMaps:
        """Denoise the inverted noise under the caption, recording every step's cross-attention.

        ``negative_embeds`` is the classifier-free negative prompt; by default the caption
        itself, as in Pix2Pix-OnTheFly's and pix2pix-zero's code.
        """
        self._check_latents(inverted)
        self._check_embeds("caption_embeds", caption_embeds)
        negative_embeds = caption_embeds if negative_embeds is None else negative_embeds
        self._check_embeds("negative_embeds", negative_embeds)
        counter = UNetCounter() if counter is None else counter
        scheduler = self._scheduler(steps)
        embeds = torch.cat([negative_embeds, caption_embeds]).to(self.device, self.dtype)
        latents = inverted.to(self.device, torch.float32) * scheduler.init_noise_sigma
        per_step: list[dict[str, torch.Tensor]] = []
        with self._probed_unet() as probe, torch.no_grad():
            for step, timestep in enumerate(scheduler.timesteps, start=1):
                raise_if_cancelled(cancel)
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
                probe.recording = {}
                noise = self._predict(model_input, timestep, embeds, "reconstruct", counter)
                per_step.append(probe.recording)
                probe.recording = None
                latents = scheduler.step(_guide(noise, guidance_scale), timestep, latents).prev_sample
                _report(callback, "reconstruct", step, steps)
        return CrossAttentionMaps(tuple(int(t) for t in scheduler.timesteps), tuple(per_step))

    def edit(
        self,
        inverted: torch.Tensor,
        caption_embeds: torch.Tensor,
        direction: torch.Tensor,
        *,
        settings: EditSettings,
        reference: CrossAttentionMaps | None = None,
        negative_embeds: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        counter: UNetCounter | None = None,
    ) -> torch.Tensor:
        """Denoise under caption + strength x direction, each step first pulling the latent's
        cross-attention toward ``reference`` by one gradient step of size
        ``settings.cross_attention_guidance``. Returns the edited latents (float32).

        ``reference`` is what :meth:`reconstruct` recorded under the same caption, negative
        prompt, steps and guidance; without it the reconstruction runs first. The negative
        prompt is the caller's choice; by default the caption itself (Pix2Pix-OnTheFly and
        pix2pix-zero). As in pix2pix-zero, the two classifier-free halves each take their own
        gradient step and predict from their own moved copy; the DDIM step continues from the
        first (negative) half's copy.
        """
        self._check_latents(inverted)
        negative_embeds = caption_embeds if negative_embeds is None else negative_embeds
        for name, embeds in (
            ("caption_embeds", caption_embeds),
            ("negative_embeds", negative_embeds),
            ("direction", direction),
        ):
            self._check_embeds(name, embeds)
        counter = UNetCounter() if counter is None else counter
        if reference is None:
            reference = self.reconstruct(
                inverted,
                caption_embeds,
                steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                negative_embeds=negative_embeds,
                callback=callback,
                cancel=cancel,
                counter=counter,
            )
        scheduler = self._scheduler(settings.steps)
        if reference.timesteps != tuple(int(t) for t in scheduler.timesteps):
            raise ValueError(
                f"the attention maps were recorded over {len(reference.timesteps)} steps, "
                f"the edit runs {settings.steps}"
            )
        directed = caption_embeds + settings.direction_strength * direction
        embeds = torch.cat([negative_embeds, directed]).to(self.device, self.dtype)
        step_size = settings.cross_attention_guidance
        latents = inverted.to(self.device, torch.float32) * scheduler.init_noise_sigma
        with self._probed_unet() as probe:
            for step, (timestep, maps) in enumerate(
                zip(scheduler.timesteps, reference.per_step, strict=True), 1
            ):
                raise_if_cancelled(cancel)
                model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
                if step_size > 0:
                    model_input = self._pull_attention(
                        model_input,
                        timestep,
                        embeds,
                        maps=maps,
                        step_size=step_size,
                        probe=probe,
                        counter=counter,
                    )
                    raise_if_cancelled(cancel)
                with torch.no_grad():
                    noise = self._predict(model_input, timestep, embeds, "edit", counter)
                latents = model_input.chunk(2)[0]
                latents = scheduler.step(
                    _guide(noise, settings.guidance_scale), timestep, latents
                ).prev_sample
                _report(callback, "edit", step, settings.steps)
        return latents

    def _scheduler(self, steps: int, *, inverse: bool = False) -> Any:
        """A fresh DDIM scheduler (inverse or not) per pass: schedulers keep per-run state."""
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
        scheduler = (DDIMInverseScheduler if inverse else DDIMScheduler).from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

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

    def _regularise(
        self,
        noise: torch.Tensor,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        *,
        scheduler: Any,
        config: InversionConfig,
        generator: torch.Generator,
        cancel: threading.Event | None,
    ) -> torch.Tensor:
        """pix2pix-zero's gradient steps on the predicted noise toward i.i.d. N(0, 1)."""

        def gradient(current: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            variable = current.detach().clone().requires_grad_(True)
            epsilon = _epsilon(variable, latents, timestep, scheduler)
            (grad,) = torch.autograd.grad(loss_of(epsilon), variable)
            return grad

        def auto_correlation(epsilon: torch.Tensor) -> torch.Tensor:
            return auto_correlation_loss(epsilon, generator, config.roll)

        with torch.enable_grad():
            for _ in range(config.regularisation_steps):
                raise_if_cancelled(cancel)
                if config.auto_correlation_weight > 0:
                    for _ in range(config.auto_correlation_rolls):
                        step = gradient(noise, auto_correlation) / config.auto_correlation_rolls
                        noise = noise - config.auto_correlation_weight * step
                if config.kl_weight > 0:
                    noise = noise - config.kl_weight * gradient(noise, kl_divergence)
        return noise.detach()

    def _pull_attention(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        *,
        maps: Mapping[str, torch.Tensor],
        step_size: float,
        probe: _AttentionProbe,
        counter: UNetCounter,
    ) -> torch.Tensor:
        """One gradient step on the latent toward the recorded cross-attention maps."""
        moving = model_input.detach().clone().requires_grad_(True)
        probe.reference = maps
        try:
            with torch.enable_grad():
                self._predict(moving, timestep, embeds, "edit", counter)
                loss = probe.loss
            if loss is None:
                raise ValueError("the UNet ran no probed cross-attention layer")
            (grad,) = torch.autograd.grad(loss, moving)
            counter.count_backward()
        finally:
            probe.reference = None
            probe.loss = None
        return (moving - step_size * grad).detach()

    @contextmanager
    def _probed_unet(self) -> Iterator[_AttentionProbe]:
        """Probe the UNet's cross-attention layers for the duration; leave it exactly as found."""
        original = self.unet.attn_processors
        flags = [(parameter, parameter.requires_grad) for parameter in self.unet.parameters()]
        probe = _AttentionProbe()
        processors: dict[str, Any] = {}
        for name, processor in original.items():
            attn = self.unet.get_submodule(name.removesuffix(".processor"))
            if attn.is_cross_attention:
                _check_probe_supports(name, attn)
                processors[name] = _ProbedCrossAttention(name, probe, processor)
            else:
                processors[name] = processor
        if not any(isinstance(processor, _ProbedCrossAttention) for processor in processors.values()):
            raise ValueError("the UNet has no cross-attention layer to guide")
        try:
            self.unet.requires_grad_(False)
            self.unet.set_attn_processor(processors)
            yield probe
        finally:
            self.unet.set_attn_processor(dict(original))
            for parameter, flag in flags:
                parameter.requires_grad_(flag)

    def _check_latents(self, latents: torch.Tensor) -> None:
        channels = self.unet.config.in_channels
        if latents.ndim != 4 or latents.shape[0] != 1 or latents.shape[1] != channels:
            raise ValueError(f"expected latents of shape [1, {channels}, h, w], got {list(latents.shape)}")
        if min(latents.shape[2:]) < 4:  # the auto-correlation roll needs a height of 4
            side = 4 * self.vae_scale_factor
            raise InvalidInput(f"This image is too thin to edit: each side must be at least {side} pixels.")

    def _check_embeds(self, name: str, embeds: torch.Tensor) -> None:
        expected = [1, self.tokenizer.model_max_length, self.unet.config.cross_attention_dim]
        if list(embeds.shape) != expected:
            raise ValueError(f"expected {name} of shape {expected}, got {list(embeds.shape)}")


def _epsilon(
    model_output: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor, scheduler: Any
) -> torch.Tensor:
    """The noise implied by the model output, whatever the model predicts."""
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return model_output
    alpha = scheduler.alphas_cumprod[int(timestep)].to(sample.device)
    beta = 1 - alpha
    if prediction == "sample":
        return (sample - alpha**0.5 * model_output) / beta**0.5
    if prediction == "v_prediction":
        return alpha**0.5 * model_output + beta**0.5 * sample
    raise ValueError(f"unsupported prediction type {prediction!r}")
