"""A contact sheet of a version's history: thumbnails in order, each with what was asked and by whom.

One PNG shows a whole lineage at a glance where a transport cannot post dozens of
images (Discord allows ten attachments a message).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from sessions.models import Version

BACKGROUND = (250, 250, 248)
TEXT = (30, 30, 30)
PADDING = 12

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def shown_steps(lineage: Sequence[Version], limit: int) -> list[tuple[int, Version]]:
    """The numbered steps a sheet shows: the original and the latest ``limit - 1``."""
    numbered = list(enumerate(lineage, start=1))
    if len(numbered) > limit:
        numbered = numbered[:1] + numbered[-(limit - 1) :]
    return numbered


def draw_lineage(lineage: Sequence[Version], pngs: Mapping[str, bytes], limit: int) -> bytes:
    """The sheet of a lineage (original first), given the PNG of each shown step by version id.

    Drawing takes seconds for a long lineage: callers on an event loop run it on a thread
    (the images are read before, on the caller's connection).
    """
    numbered = shown_steps(lineage, limit)
    title = f"{len(lineage)} step{'s' if len(lineage) != 1 else ''} to version {lineage[-1].id}"
    if len(numbered) < len(lineage):
        title += f" (steps 2-{numbered[1][0] - 1} not shown)"
    return draw_contact_sheet(title, [(number, version, pngs[version.id]) for number, version in numbered])


def draw_contact_sheet(
    title: str,
    steps: Sequence[tuple[int, Version, bytes]],
    *,
    thumbnail: int = 256,
    columns: int = 4,
    text_lines: int = 4,
    font_size: int = 14,
) -> bytes:
    """Draw ``(step number, version, png)`` left to right, top to bottom, under ``title``; return a PNG."""
    if not steps:
        raise ValueError("a contact sheet needs at least one version")
    font = _font(font_size)
    title_font = _font(font_size + 4)
    line_height = font_size + 4
    title_height = font_size + 4 + 2 * PADDING
    cell_width = thumbnail + 2 * PADDING
    cell_height = thumbnail + 2 * PADDING + line_height * text_lines
    columns = max(1, min(columns, len(steps)))
    rows = -(-len(steps) // columns)
    sheet = Image.new("RGB", (columns * cell_width, title_height + rows * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (PADDING, PADDING), _fit(title, title_font, sheet.width - 2 * PADDING), font=title_font, fill=TEXT
    )
    for index, (number, version, png) in enumerate(steps):
        left = (index % columns) * cell_width + PADDING
        top = title_height + (index // columns) * cell_height
        with Image.open(io.BytesIO(png)) as image:
            picture = image.convert("RGB")
        # Fit the cell both ways: small images are enlarged too, so every step reads alike.
        picture = ImageOps.contain(picture, (thumbnail, thumbnail), Image.Resampling.LANCZOS)
        sheet.paste(
            picture, (left + (thumbnail - picture.width) // 2, top + (thumbnail - picture.height) // 2)
        )
        what, who = _describe(version)
        lines = [*_wrap(f"{number}. {what}", font, thumbnail, text_lines - 1), _fit(who, font, thumbnail)]
        for line_number, line in enumerate(lines):
            y = top + thumbnail + PADDING // 2 + line_number * line_height
            draw.text((left, y), line, font=font, fill=TEXT)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _font(size: int) -> Font:
    """DejaVu Sans where the system has it (accents, Greek, Cyrillic), else Pillow's built-in font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _describe(version: Version) -> tuple[str, str]:
    """What the step was, and who made it (always shown, on its own line)."""
    if version.instruction is None:
        return "original", f"from {version.author_name}"
    return f"“{version.instruction}”", f"by {version.author_name}"


def _wrap(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap by rendered width; a cut-off last line ends in an ellipsis."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    lines.append(current)
    if len(lines) > max_lines:
        return [_fit(line, font, width) for line in lines[: max_lines - 1]] + [
            _fit(lines[max_lines - 1], font, width, cut=True)
        ]
    return [_fit(line, font, width) for line in lines]


def _fit(line: str, font: Font, width: int, *, cut: bool = False) -> str:
    """The line if it fits; else (or when ``cut``) shortened to fit with a closing ellipsis."""
    if not cut and font.getlength(line) <= width:
        return line
    while line and font.getlength(line + "…") > width:
        line = line[:-1]
    return line.rstrip() + "…"
