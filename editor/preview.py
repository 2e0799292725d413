"""Watching an edit form: small pictures of the predicted clean latents while the edit runs.

A full VAE decode per preview would cost as much as a denoising step. Instead a linear map
from the latent channels to RGB (plus a bias) is fitted once per checkpoint, at load, by least
squares against a few VAE decodes of colourful synthetic images: it fits whatever VAE is
loaded. A preview is then a 4x3 matrix product on the latent grid (64x64 at 512 px).
:class:`PreviewMaker` makes at most one per interval per edit, so previews cost the edit
almost nothing (``bench/steering_bench.py`` measures it).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from editor.types import PreviewCallback

if TYPE_CHECKING:
    from editor.diffusion import DiffusionModels

#: Side of the synthetic images the map is fitted on, and how many of them.
FIT_SIDE = 128
FIT_IMAGES = 4
#: Previews are shown this many times larger than the latent grid (nearest neighbour).
UPSCALE = 2


@dataclass(frozen=True)
class LatentPreview:
    """``rgb = [latent channels, 1] @ weights``, per latent pixel, in 0..1."""

    weights: torch.Tensor  # [channels + 1, 3]

    @classmethod
    def fit(cls, diffusion: DiffusionModels, seed: int = 0) -> LatentPreview:
        """Least squares from the latents of synthetic images to their VAE decodes, pooled to the
        latent grid."""
        generator = torch.Generator().manual_seed(seed)
        inputs, targets = [], []
        for _ in range(FIT_IMAGES):
            image = _synthetic_image(generator)
            latents = diffusion.encode_image(image)
            decoded = np.asarray(diffusion.decode(latents), dtype=np.float32) / 255.0
            grid = (int(latents.shape[-2]), int(latents.shape[-1]))
            pooled = torch.nn.functional.adaptive_avg_pool2d(
                torch.from_numpy(decoded).permute(2, 0, 1)[None], grid
            )
            inputs.append(_features(latents.cpu()))
            targets.append(pooled[0].permute(1, 2, 0).reshape(-1, 3))
        solution = torch.linalg.lstsq(torch.cat(inputs).double(), torch.cat(targets).double())
        return cls(solution.solution.float())

    def image(self, latents: torch.Tensor) -> Image.Image:
        """The preview of latents ``[K, C, h, w]``: K tiles, two per row, at :data:`UPSCALE`."""
        tiles = []
        for one in latents.detach().float().cpu():
            rgb = (_features(one[None]) @ self.weights).clamp(0, 1).reshape(*one.shape[-2:], 3)
            tile = Image.fromarray((rgb.numpy() * 255).round().astype(np.uint8))
            tiles.append(tile.resize((tile.width * UPSCALE, tile.height * UPSCALE), Image.Resampling.NEAREST))
        columns = min(2, len(tiles))
        sheet = Image.new("RGB", (columns * tiles[0].width, -(-len(tiles) // columns) * tiles[0].height))
        for index, tile in enumerate(tiles):
            sheet.paste(tile, ((index % columns) * tile.width, (index // columns) * tile.height))
        return sheet


class PreviewMaker:
    """Turns an edit's predicted clean latents into previews, at most one per ``interval_s``
    (the first at once), handed to ``deliver`` as PNG bytes."""

    def __init__(self, latent_preview: LatentPreview, interval_s: float, deliver: PreviewCallback) -> None:
        self._map = latent_preview
        self._interval_s = interval_s
        self._deliver = deliver
        self._last = float("-inf")

    def __call__(self, step: int, total: int, clean: torch.Tensor) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s and step != 1:
            return
        self._last = now
        buffer = io.BytesIO()
        self._map.image(clean).save(buffer, format="PNG")
        self._deliver(buffer.getvalue())


def _features(latents: torch.Tensor) -> torch.Tensor:
    """``[h*w, C + 1]``: each latent pixel's channels and a 1 for the bias."""
    flat = latents[0].reshape(latents.shape[1], -1).T.float()
    return torch.cat([flat, torch.ones(flat.shape[0], 1)], dim=1)


def _synthetic_image(generator: torch.Generator) -> Image.Image:
    """A smooth random colour field: colours everywhere, edges nowhere in particular."""
    colours = torch.rand(1, 3, 4, 4, generator=generator)
    field = torch.nn.functional.interpolate(colours, size=(FIT_SIDE, FIT_SIDE), mode="bilinear")
    return Image.fromarray((field[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
