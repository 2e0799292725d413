"""A result's provenance, carried in its PNG as text chunks that any PNG reader shows.

Whoever finds the file later (downloaded from Discord, copied from the console's folder)
can tell how it was made: the instruction, how it was read (the captions), the seed, the
settings and the models. Values that are lists or mappings are JSON.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from editor.types import EditRequest, EditResult

SOFTWARE = "Pix2Pix-OnTheFly bot"


def provenance(request: EditRequest, result: EditResult, models: Mapping[str, str]) -> dict[str, str]:
    """The text chunks of one result, by keyword."""
    return {
        "Software": SOFTWARE,
        "Instruction": request.instruction,
        "Caption": result.caption,
        "Before captions": json.dumps(list(result.before_captions), ensure_ascii=False),
        "After captions": json.dumps(list(result.after_captions), ensure_ascii=False),
        "Seed": str(request.seed),
        "Settings": json.dumps(request.settings.to_dict(), sort_keys=True),
        "Models": json.dumps(dict(models), sort_keys=True),
        **({"Notes": "\n".join(result.notes)} if result.notes else {}),
    }


def png_with_text(image: Image.Image, chunks: Mapping[str, str]) -> bytes:
    """``image`` as PNG with ``chunks`` as international text (iTXt: any language survives)."""
    info = PngInfo()
    for keyword, text in chunks.items():
        info.add_itxt(keyword, text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
