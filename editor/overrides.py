"""Checks on before/after captions a person wrote (Fix captions), in the engine's own terms.

The language model's captions are fitted to CLIP by the engine; a person's are taken as
they are, so they are refused up front, with a message for that person, when CLIP would
cut them short, when there is nothing to compare, or when they would change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from editor.types import EditSettings, InvalidInput

#: At most this many captions per side, as many as the language model may be asked for.
MAX_CAPTIONS = int(EditSettings.LIMITS["num_captions"][1])
#: A caption longer than this is surely over CLIP's tokens; refused before tokenising.
MAX_CAPTION_CHARS = 300

Captions = tuple[tuple[str, ...], tuple[str, ...]]


def tidy_captions(before: Sequence[str], after: Sequence[str]) -> Captions:
    """Each caption on one line with single spaces; blank lines dropped."""

    def tidy(lines: Sequence[str]) -> tuple[str, ...]:
        return tuple(" ".join(line.split()) for line in lines if line.strip())

    return tidy(before), tidy(after)


def check_caption_overrides(captions: Captions, count_tokens: Callable[[str], int], max_tokens: int) -> None:
    """Raise :class:`InvalidInput` unless ``captions`` (tidied) can direct an edit as written.

    ``count_tokens(text)`` counts CLIP's tokens with its start and end markers, which
    ``max_tokens`` (the text encoder's length) includes.
    """
    before, after = captions
    if not before or not after or not all(isinstance(c, str) and c.strip() for c in before + after):
        raise InvalidInput("Write at least one caption of the image before and one after the edit.")
    for side, group in (("before", before), ("after", after)):
        if len(group) > MAX_CAPTIONS:
            raise InvalidInput(f"Give at most {MAX_CAPTIONS} {side} captions, one per line.")
    for caption in before + after:
        if len(caption) > MAX_CAPTION_CHARS or count_tokens(caption) > max_tokens:
            raise InvalidInput(
                f"“{caption[:40]}…” is too long: the text encoder (CLIP) reads at most "
                f"{max_tokens - 2} tokens, about {(max_tokens - 2) * 3 // 4} words. Please shorten it."
            )
    if set(before) == set(after):
        raise InvalidInput(
            "The before and after captions are the same, so the edit would change nothing. "
            "Change the after captions to say what the image should become."
        )
