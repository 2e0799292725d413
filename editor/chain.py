"""Chain mode ``compose``: a turn applies its lineage's edit directions, summed, to the chain's
first image, instead of editing the previous result.

Reinverting each result compounds the inversion's reconstruction error turn after turn; a
sum of directions on the first inversion does not, so the tenth edit is as sharp as the
first, and no turn after the first runs the inversion (its cache serves them all). The
direction of a turn is the same as when it ran alone (its captions); its strength scales it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from editor.direction import edit_direction
from editor.types import PriorEdit

#: ``encode(captions)``: CLIP embeddings of a list of captions (``DiffusionModels.encode_prompt``).
Encode = Callable[[list[str]], torch.Tensor]


def compose(
    directions: torch.Tensor,
    strengths: Sequence[float],
    priors: Sequence[Sequence[PriorEdit]],
    encode: Encode,
) -> tuple[torch.Tensor, list[float]]:
    """Each edit's direction ``d`` at strength ``s`` with its earlier turns added: ``s·d + Σ sᵢ·dᵢ``,
    returned at strength 1. Edits without earlier turns are returned as they are."""
    rows, scales = [], []
    for index, (strength, prior) in enumerate(zip(strengths, priors, strict=True)):
        direction = directions[index : index + 1]
        if not prior:
            rows.append(direction)
            scales.append(strength)
            continue
        total = strength * direction
        for turn in prior:
            total = total + turn.strength * edit_direction(
                encode(list(turn.before)), encode(list(turn.after))
            )
        rows.append(total)
        scales.append(1.0)
    return torch.cat(rows), scales
