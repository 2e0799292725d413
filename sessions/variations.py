"""Variations of an edit: K alternatives made as one batch, shown as one numbered grid.

The alternatives differ in what the batch may vary (``Editor.edit_many``): each has its own
language-model sample (seed) and direction strength, and all share the source version's
inversion and reconstruction. They are derived from the job's seed, so a job taken up again
after a restart makes the same ones.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace

from PIL import Image, ImageDraw, ImageFont

from editor.types import EditRequest, EditSettings

#: Each alternative's direction strength relative to the edit's (the first keeps it).
STRENGTH_FACTORS = (1.0, 0.75, 1.25, 1.5)
#: Apart from each other in seed so that no two alternatives share a language-model sample.
SEED_STRIDE = 1_000_003
GRID_COLUMNS = 2
LABEL = (255, 255, 255)
LABEL_SHADOW = (0, 0, 0)


def variation_requests(base: EditRequest) -> tuple[EditRequest, ...]:
    """The batch of one variations job, from its base request (the edit and the job's seed)."""
    low, high = EditSettings.LIMITS["direction_strength"]
    strength = base.settings.direction_strength
    return tuple(
        replace(
            base,
            seed=(base.seed + SEED_STRIDE * index) % 2**31,
            settings=base.settings.replace(
                direction_strength=round(min(high, max(low, strength * factor)), 4)
            ),
        )
        for index, factor in enumerate(STRENGTH_FACTORS)
    )


def draw_grid(pngs: Sequence[bytes]) -> bytes:
    """The images side by side, two per row, each numbered from 1 in its corner; a PNG."""
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in pngs]
    width = max(image.width for image in images)
    height = max(image.height for image in images)
    rows = -(-len(images) // GRID_COLUMNS)
    grid = Image.new("RGB", (GRID_COLUMNS * width, rows * height), LABEL_SHADOW)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(12, height // 8))
    for index, image in enumerate(images):
        x, y = (index % GRID_COLUMNS) * width, (index // GRID_COLUMNS) * height
        grid.paste(image, (x, y))
        margin = max(2, height // 40)
        draw.text(
            (x + margin, y + margin),
            str(index + 1),
            font=font,
            fill=LABEL,
            stroke_width=max(1, height // 100),
            stroke_fill=LABEL_SHADOW,
        )
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()
