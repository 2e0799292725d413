"""pix2pix-zero's noise regularisation during DDIM inversion, with its rolls drawn on the host.

At each inversion step the predicted noise takes gradient steps on an auto-correlation
loss (one per random roll) and on a KL loss, pulling it toward i.i.d. N(0, 1). The rolls
come from a CPU generator in the reference's order, so its random stream can be replayed.
They are drawn for a whole step at once, while the GPU runs that step's UNet forward, and
reach the device in one non-blocking copy: the regularisation loop itself (about 4,000
small kernels per step at 512 px) makes no host-to-device copy and no synchronisation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from editor.config import InversionConfig
from editor.types import raise_if_cancelled

#: The auto-correlation pyramid stops once the shorter side is this small (pix2pix-zero: 8x8).
PYRAMID_MIN_SIDE = 8


def draw_roll(size: int, generator: torch.Generator, *, allow_zero_roll: bool = False) -> int:
    """A random shift for the auto-correlation loss along a side of ``size``.

    Ours is in ``1..size//2``, so never a multiple of ``size`` (which would compare the noise
    with itself). ``allow_zero_roll`` reproduces the reference's ``0..size//2-1``.
    """
    if allow_zero_roll:
        return int(torch.randint(size // 2, (1,), generator=generator).item())
    if size < 2:
        raise ValueError(f"cannot roll a side of {size} by a nonzero amount")
    return int(torch.randint(1, size // 2 + 1, (1,), generator=generator).item())


def pyramid_sides(height: int, width: int) -> list[tuple[int, int]]:
    """The sides of each pyramid level: halved until the shorter side is at most 8."""
    levels = [(height, width)]
    while min(levels[-1]) > PYRAMID_MIN_SIDE:
        levels.append((levels[-1][0] // 2, levels[-1][1] // 2))
    return levels


def draw_shifts(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator,
    count: int,
    *,
    allow_zero_roll: bool = False,
) -> torch.Tensor:
    """The rolls of ``count`` auto-correlation losses on noise of ``shape``, as ``[count, levels,
    batch * channels]`` (CPU, int64), drawn in the reference's order: loss, sample, channel, level."""
    batch, channels, height, width = shape
    levels = pyramid_sides(height, width)
    draws = [
        [draw_roll(min(sides), generator, allow_zero_roll=allow_zero_roll) for sides in levels]
        for _ in range(count * batch * channels)
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
