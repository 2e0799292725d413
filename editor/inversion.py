"""pix2pix-zero's DDIM inversion: its noise regularisation, with rolls drawn on the host, and
its own inverse schedule.

At each inversion step the predicted noise takes gradient steps on an auto-correlation
loss (one per random roll) and on a KL loss, pulling it toward i.i.d. N(0, 1). The rolls
follow ``InversionConfig.roll`` (:data:`~editor.config.ROLL_RULES`) and come from a CPU
generator in the reference's order, so its random stream can be replayed. They are drawn
for a whole step at once, while the GPU runs that step's UNet forward, and reach the
device in one non-blocking copy: the regularisation loop itself (about 4,000 small kernels
per step at 512 px) makes no host-to-device copy and no synchronisation.

:class:`Pix2PixZeroInverseSchedule` is the paper's inverse schedule (``InversionConfig.schedule
= "pix2pix_zero"``); :func:`epsilon_alpha` gives the alpha-bar the regularisation uses with
either schedule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from editor.config import ROLL_RULES, InversionConfig
from editor.types import raise_if_cancelled

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

#: The auto-correlation pyramid stops once the height is this small (pix2pix-zero: 8x8).
PYRAMID_MIN_SIDE = 8


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


def pyramid_sides(height: int, width: int) -> list[tuple[int, int]]:
    """The sides of each pyramid level: halved until the height is at most 8, as in the
    references, or before the width would be pooled below one pixel (where they fail)."""
    levels = [(height, width)]
    while levels[-1][0] > PYRAMID_MIN_SIDE and levels[-1][1] >= 2:
        levels.append((levels[-1][0] // 2, levels[-1][1] // 2))
    return levels


def draw_shifts(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator,
    count: int,
    *,
    rule: str = "pix2pix_zero",
) -> torch.Tensor:
    """The rolls of ``count`` auto-correlation losses on noise of ``shape``, as ``[count, levels,
    batch * channels]`` (CPU, int64), drawn by ``rule`` from each level's height in the
    reference's order: loss, sample, channel, level. One roll serves both axes of a level."""
    batch, channels, height, width = shape
    levels = pyramid_sides(height, width)
    draws = [
        [draw_roll(sides[0], generator, rule) for sides in levels] for _ in range(count * batch * channels)
    ]
    return torch.tensor(draws).reshape(count, batch * channels, len(levels)).transpose(1, 2).contiguous()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` without waiting for the GPU (pinned, non-blocking)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _roll_each(maps: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.roll`` of every ``maps[k]`` (shape ``[K, H, W]``) by its own ``shifts[k]``."""
    size = maps.shape[dim]
    positions = torch.arange(size, device=maps.device)
    index = (positions[None, :] - shifts[:, None]) % size
    index = index[:, :, None] if dim == 1 else index[:, None, :]
    return maps.gather(dim, index.expand_as(maps))


def auto_correlation_loss(noise: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """pix2pix-zero's auto-correlation penalty over an average-pooled pyramid of each channel.

    Each channel at each level is multiplied by itself rolled along height and along width
    by ``shifts[level, channel]`` (one tensor per loss, from :func:`draw_shifts`); the squared
    means are summed. All channels are computed at once.
    """
    batch, channels, height, width = noise.shape
    maps = noise.reshape(batch * channels, height, width)
    loss = noise.new_zeros(())
    for level in range(len(pyramid_sides(height, width))):
        if level:
            maps = torch.nn.functional.avg_pool2d(maps[:, None], kernel_size=2)[:, 0]
        for dim in (1, 2):
            loss = loss + (maps * _roll_each(maps, shifts[level], dim)).mean((1, 2)).pow(2).sum()
    return loss


def kl_divergence(noise: torch.Tensor) -> torch.Tensor:
    """KL-style penalty pulling the noise's mean to 0 and variance to 1 (pix2pix-zero's)."""
    mean = noise.mean()
    variance = noise.var()
    return variance + mean**2 - 1 - torch.log(variance + 1e-7)


def epsilon(
    model_output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, prediction: str
) -> torch.Tensor:
    """The noise implied by the model output, whatever the model predicts (``alpha``: alpha-bar_t)."""
    if prediction == "epsilon":
        return model_output
    beta = 1 - alpha
    if prediction == "sample":
        return (sample - alpha**0.5 * model_output) / beta**0.5
    if prediction == "v_prediction":
        return alpha**0.5 * model_output + beta**0.5 * sample
    raise ValueError(f"unsupported prediction type {prediction!r}")


def regularisation_draws(config: InversionConfig) -> int:
    """How many auto-correlation losses (each with its own rolls) one inversion step computes."""
    if config.auto_correlation_weight <= 0:
        return 0
    return config.regularisation_steps * config.auto_correlation_rolls


def regularise(
    noise: torch.Tensor,
    latents: torch.Tensor,
    alpha: torch.Tensor,
    *,
    prediction: str,
    config: InversionConfig,
    shifts: torch.Tensor,
    cancel: threading.Event | None,
) -> torch.Tensor:
    """pix2pix-zero's gradient steps on the predicted noise toward i.i.d. N(0, 1).

    ``shifts`` holds the step's rolls (:func:`regularisation_draws` of them) on the device.
    """
    rolls = iter(shifts)

    def gradient(current: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        variable = current.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(epsilon(variable, latents, alpha, prediction)), variable)
        return grad

    def auto_correlation(noise_estimate: torch.Tensor) -> torch.Tensor:
        return auto_correlation_loss(noise_estimate, next(rolls))

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


class Pix2PixZeroInverseSchedule:
    """pix2pix-zero's own inverse DDIM schedule, which the paper's code inverts with.

    Of the sampler's N ascending timesteps ``k * (1000 // N) + steps_offset`` it runs the
    N-2 inner ones (``timesteps.flip(0)[1:-1]``), and each step moves the latent from alpha
    at ``t - 1`` to alpha at ``t - 1 + 1000 // N``: the image latent is taken as already at
    the first inner step. diffusers' ``DDIMInverseScheduler`` instead runs all N steps, from
    alpha 1 up to the edit's first timestep. Epsilon-predicting models only, as there.
    Timesteps stay on the host; the alphas live on ``device``.
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
        ascending = torch.arange(steps) * self.stride + sampler.config.steps_offset
        self.timesteps = ascending[1:-1]

    def alpha(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The alpha-bar a step at ``timestep`` starts from: alpha at ``t - 1``."""
        return self.alphas_cumprod[int(timestep) - 1]

    def step(
        self, noise: torch.Tensor, timestep: int | torch.Tensor, latents: torch.Tensor
    ) -> DDIMSchedulerOutput:
        """One DDIM step up the schedule: from alpha at ``t - 1`` to ``t - 1 + stride``."""
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

        alpha = self.alpha(timestep)
        alpha_next = self.alphas_cumprod[int(timestep) - 1 + self.stride]
        original = (latents - (1 - alpha).sqrt() * noise) / alpha.sqrt()
        prev_sample = alpha_next.sqrt() * original + (1 - alpha_next).sqrt() * noise
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=original)


def epsilon_alpha(scheduler: Any, device: torch.device) -> Callable[[int], torch.Tensor]:
    """Per timestep, the alpha-bar the regularisation's epsilon uses (``regularise``'s ``alpha``).

    pix2pix-zero's schedule: the alpha its step starts from (``t - 1``), as the paper's code.
    diffusers' ``DDIMInverseScheduler``: ``alphas_cumprod[t]``, as its pipeline's ``get_epsilon``.
    """
    if isinstance(scheduler, Pix2PixZeroInverseSchedule):
        return scheduler.alpha
    alphas = scheduler.alphas_cumprod.to(device)
    return lambda timestep: alphas[timestep]
