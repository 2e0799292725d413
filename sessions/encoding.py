"""A worker's results as the store keeps them: PNGs with their provenance, inversions as bytes.

Encoding a full-size PNG takes long enough to stall the event loop, so :mod:`sessions.jobs`
runs these on a thread before handing the encoded outcome to the writer.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from editor.config import LimitsConfig
from editor.images import load_original
from editor.types import EditRequest, EditResult
from sessions.provenance import png_with_text, provenance
from sessions.records import EditOutcome
from sessions.variation_store import MadeVariation


def edit_outcome(result: EditResult, request: EditRequest, models: Mapping[str, str]) -> EditOutcome:
    """Encode a result for the store (PNG with its provenance, serialised inversion); runs off
    the event loop."""
    inverted_now = result.inversion is not request.inversion
    return EditOutcome(
        image_png=png_with_text(result.image, provenance(request, result, models)),
        width=result.image.width,
        height=result.image.height,
        caption=result.caption,
        before_captions=tuple(result.before_captions),
        after_captions=tuple(result.after_captions),
        inversion=result.inversion.to_bytes() if inverted_now else None,
        inversion_key=result.inversion.key,
        notes=result.notes,
    )


def original_png(upload: bytes, limits: LimitsConfig) -> tuple[bytes, int, int]:
    """The upload as posted (upright RGB, full size) as PNG, with its size."""
    image = load_original(upload, limits)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image.width, image.height


def variations_made(
    results: tuple[EditResult, ...], requests: tuple[EditRequest, ...], models: Mapping[str, str]
) -> tuple[list[MadeVariation], tuple[str, bytes] | None]:
    """Encode a batch's results (PNGs with provenance) and the inversion they shared, if new."""
    made = [
        MadeVariation(
            seed=request.seed,
            settings=request.settings,
            image_png=png_with_text(result.image, provenance(request, result, models)),
            width=result.image.width,
            height=result.image.height,
            caption=result.caption,
            before_captions=tuple(result.before_captions),
            after_captions=tuple(result.after_captions),
            notes=result.notes,
        )
        for result, request in zip(results, requests, strict=True)
    ]
    inversion = results[0].inversion
    inverted_now = inversion is not requests[0].inversion
    return made, ((inversion.key, inversion.to_bytes()) if inverted_now else None)
