"""pix2pix-zero's two denoising steps: the reconstruction step that records cross-attention
maps, and the guided step that pulls a batch of edits toward them.

:class:`DenoisingSteps` holds what every step of one pass shares (the counted UNet call,
the scheduler, the attention probe, the counter and the cancel event), so that
:class:`~editor.diffusion.DiffusionModels` can run the two passes one after the other or
interleaved, with the very same arithmetic either way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from editor.attention import AttentionProbe
from editor.types import raise_if_cancelled

#: A timestep as the scheduler wants it (a Python int) and as the UNet wants it (on the device).
Timestep = tuple[int, torch.Tensor]

#: ``predict(latents, unet_timestep, embeds, stage)``: one counted UNet forward, float32 out.
Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]


@dataclass
class UNetCounter:
    """UNet work done so far, counted at each call (the engine turns it into ``EditCounts``),
    and the most bytes of recorded attention maps held at once."""

    forwards: dict[str, int] = field(default_factory=dict)
    batch_samples: dict[str, int] = field(default_factory=dict)
    backwards: int = 0
    peak_map_bytes: int = 0

    def count_forward(self, stage: str, batch: int) -> None:
        self.forwards[stage] = self.forwards.get(stage, 0) + 1
        self.batch_samples[stage] = self.batch_samples.get(stage, 0) + batch

    def count_backward(self) -> None:
        self.backwards += 1

    def hold_maps(self, maps: Sequence[Mapping[str, torch.Tensor]]) -> None:
        held = sum(probs.nbytes for step in maps for probs in step.values())
        self.peak_map_bytes = max(self.peak_map_bytes, held)


@dataclass(frozen=True)
class CrossAttentionMaps:
    """The reconstruction's cross-attention probabilities: one ``{layer: probs}`` per step.

    They depend on the inverted noise, the caption, the negative prompt, the steps and the
    guidance scale, never on the instruction. Each tensor is ``[2 * heads, queries, tokens]``
    (negative half, then caption half), or ``[heads, ...]`` from a batch-1 reconstruction.
    """

    timesteps: tuple[int, ...]
    per_step: tuple[Mapping[str, torch.Tensor], ...]


def guide(noise: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance over a batch of (negative halves, conditional halves)."""
    unconditional, conditional = noise.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


@dataclass
class DenoisingSteps:
    """The steps of one denoising pass (or of two interleaved ones)."""

    predict: Predict
    scheduler: Any
    probe: AttentionProbe
    counter: UNetCounter
    cancel: threading.Event | None

    def reconstruct(
        self, latents: torch.Tensor, timestep: Timestep, embeds: torch.Tensor, guidance_scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One reconstruction step and its maps; batch 1 when ``embeds`` is the caption alone
        (its guidance would be a no-op), else batch 2 (negative, caption)."""
        step_timestep, unet_timestep = timestep
        halves = embeds.shape[0]
        model_input = self.scheduler.scale_model_input(torch.cat([latents] * halves), step_timestep)
        self.probe.recording = {}
        try:
            with torch.no_grad():
                noise = self.predict(model_input, unet_timestep, embeds, "reconstruct")
            maps = self.probe.recording
        finally:
            self.probe.recording = None
        if halves == 2:
            noise = guide(noise, guidance_scale)
        return self.scheduler.step(noise, step_timestep, latents).prev_sample, maps

    def guided(
        self,
        latents: torch.Tensor,
        timestep: Timestep,
        embeds: torch.Tensor,
        maps: Mapping[str, torch.Tensor],
        *,
        step_size: float,
        guidance_scale: float,
    ) -> torch.Tensor:
        """One guided step of K edits: ``latents`` ``[K, ...]``, ``embeds`` ``[2K, ...]``.

        As in pix2pix-zero, the two classifier-free halves each take their own gradient step
        and predict from their own moved copy; the DDIM step continues from the negative
        halves' copies.
        """
        step_timestep, unet_timestep = timestep
        model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2), step_timestep)
        if step_size > 0:
            model_input = self._pull_attention(model_input, unet_timestep, embeds, maps, step_size)
            raise_if_cancelled(self.cancel)
        with torch.no_grad():
            noise = self.predict(model_input, unet_timestep, embeds, "edit")
        negative_copies = model_input.chunk(2)[0]
        return self.scheduler.step(guide(noise, guidance_scale), step_timestep, negative_copies).prev_sample

    def _pull_attention(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        maps: Mapping[str, torch.Tensor],
        step_size: float,
    ) -> torch.Tensor:
        """One gradient step on the latents toward the recorded cross-attention maps."""
        moving = model_input.detach().clone().requires_grad_(True)
        self.probe.reference = maps
        try:
            with torch.enable_grad():
                self.predict(moving, timestep, embeds, "edit")
                loss = self.probe.loss
            if loss is None:
                raise ValueError("the UNet ran no probed cross-attention layer")
            (grad,) = torch.autograd.grad(loss, moving)
            self.counter.count_backward()
        finally:
            self.probe.reference = None
            self.probe.loss = None
        return (moving - step_size * grad).detach()
