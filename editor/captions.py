"""The language-model step: N captions before and N after the instruction's transformation.

A prompt template (a ``.txt`` file with ``{instruction}`` and ``{n}`` placeholders) is
followed by the answer's start, which this module writes itself so that prompt, stopping
rule and parser (:mod:`editor.caption_parser`) agree on one format::

    Before transformation:
    1. <BLIP caption>          <- only with the caption lock

With the caption lock (the paper's trick) the language model continues from a true
description of the image, and the parser reads the answer's start plus the generated
text, so the locked caption is always ``before[0]``. Without the lock the prompt ends at
the heading. Numbered example lists in a template are cut to N items, as the paper cut its
examples to N, so the examples never show a longer answer than the one asked for.

Generation is bounded by a budget derived from N: the tokens of the answer's layout plus
``caption_tokens`` per caption the model writes, so any N up to the limit fits; it stops as
soon as the after-list holds N complete lines. Sampling is seeded per edit (the first
attempt uses ``seed``, the next ``seed + 1`` and so on), so retries differ yet every edit is
reproducible; the process-wide RNG is left as it was. An answer is retried, up to
``max_attempts`` attempts (one when sampling is off: greedy decoding would only repeat
itself), when it does not parse, when a caption cannot be shortened to the text encoder's
token limit, or when its two lists say the same thing within that limit.

Fallback, when no attempt succeeds: before = (caption,) and after =
("<caption>, <instruction>",), the caption shortened at a word boundary when both would not
fit the text encoder. The after caption then differs from the before caption exactly by the
instruction's words, so the CLIP edit direction still points at the requested change, only
less precisely than N paraphrases would. :class:`CaptionSet` says when it was used.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from editor.caption_parser import (
    AFTER_HEADING,
    answer_start,
    clean_caption,
    is_caption,
    parse_captions,
    read_lists,
    same_captions,
)
from editor.config import LanguageModelConfig
from editor.types import EditSettings, InvalidInput, raise_if_cancelled

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: The prompt templates shipped with the project.
SHIPPED_TEMPLATES = Path(__file__).with_name("prompts")

_PLACEHOLDER = re.compile(r"\{(instruction|n)\}")
_EXAMPLE_ITEM = re.compile(r"^(\d+)\. .*\n?", re.MULTILINE)


@dataclass(frozen=True)
class CaptionSet:
    """What the language model step produced, and what it cost.

    ``generate_calls`` counts the calls to the model's ``generate`` (one per attempt at a
    well-formed answer), so the engine's counts need no knowledge of the retry policy.
    ``shortened`` counts captions cut at a word boundary to fit the text encoder.
    """

    before: tuple[str, ...]
    after: tuple[str, ...]
    used_fallback: bool
    generate_calls: int
    tokens: int
    shortened: int = 0


@dataclass(frozen=True)
class Generation:
    """One continuation of a prompt."""

    text: str
    tokens: int
    #: The token budget ran out, so the last line may be cut short.
    truncated: bool


class TextGenerator(Protocol):
    """Continue ``prompt`` by at most ``max_new_tokens``; stop early once ``done(text_so_far)``
    or ``cancel`` is set. ``count_tokens`` measures text in the same tokens."""

    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        max_new_tokens: int,
        done: Callable[[str], bool],
        cancel: threading.Event | None,
    ) -> Generation: ...

    def count_tokens(self, text: str) -> int: ...


class TokenLimit(Protocol):
    """The text encoder's limit on one caption (:class:`editor.direction.ClipTokenLimit`)."""

    limit: int

    def count(self, text: str) -> int: ...

    def shorten(self, text: str, limit: int | None = None) -> str | None: ...


def cut_examples(template_text: str, n: int) -> str:
    """The template with every numbered example item past ``n`` removed."""
    return _EXAMPLE_ITEM.sub(lambda item: "" if int(item[1]) > n else item[0], template_text)


def build_prompt(template_text: str, instruction: str, caption: str, n: int, lock: bool) -> str:
    """The template with its placeholders filled, ending where the model's answer begins."""
    values = {"instruction": " ".join(instruction.split()), "n": str(n)}
    body = _PLACEHOLDER.sub(lambda match: values[match.group(1)], cut_examples(template_text, n)).rstrip()
    locked = clean_caption(caption) if lock else None
    if lock and not (locked and is_caption(locked)):
        raise ValueError("the caption lock needs a caption with words in it")
    return body + "\n" + answer_start(locked)


def answer_budget(count_tokens: Callable[[str], int], n: int, lock: bool, caption_tokens: int) -> int:
    """Tokens a well-formed answer may take: its layout after the prompt, plus
    ``caption_tokens`` for each caption the model writes (2N, one less with the lock)."""
    first = 2 if lock else 1
    layout = "".join(f"{index}. \n" for index in range(first, n + 1))
    layout += "\n" + AFTER_HEADING + "\n" + "".join(f"{index}. \n" for index in range(1, n + 1))
    return count_tokens(layout) + (2 * n - (first - 1)) * caption_tokens


def fit_captions(captions: tuple[str, ...], limit: TokenLimit | None) -> tuple[tuple[str, ...], int] | None:
    """The captions shortened to the text encoder's limit and how many were; None if one cannot be."""
    if limit is None:
        return captions, 0
    fitted = [limit.shorten(caption) for caption in captions]
    kept = tuple(caption for caption in fitted if caption is not None)
    if len(kept) < len(captions):
        return None
    return kept, sum(a != b for a, b in zip(captions, kept, strict=True))


def fallback_captions(
    caption: str, instruction: str, limit: TokenLimit | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The caption alone before; the caption with the instruction appended after.

    When both do not fit the text encoder, the caption is shortened at a word boundary on
    both sides, so that the instruction's words are still the whole difference.
    """
    instruction = " ".join(instruction.split())
    joined = clean_caption(f"{caption}, {instruction}")
    if limit is None or limit.count(joined) <= limit.limit:
        return (caption,), (joined,)
    room = limit.limit - limit.count(f", {instruction}")
    prefix = limit.shorten(caption, room) if room > 0 else None
    while prefix is not None and limit.count(f"{prefix}, {instruction}") > limit.limit:
        room -= 1
        prefix = limit.shorten(caption, room) if room > 0 else None
    if prefix is None:
        raise InvalidInput(
            f"The instruction is too long for the text encoder ({limit.count(instruction)} tokens; "
            f"it and a few words of the caption must fit in {limit.limit}). Please shorten it."
        )
    return (prefix,), (f"{prefix}, {instruction}",)


def load_templates(folder: str | Path) -> dict[str, str]:
    """Every ``*.txt`` in ``folder`` by file stem; each must contain ``{instruction}``."""
    folder = Path(folder)
    templates = {path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))}
    if not templates:
        raise ValueError(f"no prompt templates (*.txt) found in {folder}")
    for name, text in templates.items():
        if "{instruction}" not in text:
            raise ValueError(f"prompt template {name!r} in {folder} has no {{instruction}} placeholder")
    return templates


class CaptionWriter:
    """Prompts, retries and parses; the text generator itself is injected."""

    def __init__(
        self, templates: Mapping[str, str], lm: LanguageModelConfig, generate_text: TextGenerator
    ) -> None:
        if lm.max_attempts < 1 or lm.caption_tokens < 1:
            raise ValueError("language_model.max_attempts and caption_tokens must be at least 1")
        self.templates = dict(templates)
        self.lm = lm
        self.generate_text = generate_text

    @classmethod
    def from_pretrained(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, lm: LanguageModelConfig
    ) -> CaptionWriter:
        templates = load_templates(lm.templates_dir or SHIPPED_TEMPLATES)
        from editor.language_model import CausalLanguageModel

        return cls(templates, lm, CausalLanguageModel.from_pretrained(path, device, dtype, lm))

    @property
    def template_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.templates))

    def budget(self, n: int, lock: bool) -> int:
        """New tokens allowed per attempt for N captions a side."""
        return answer_budget(self.generate_text.count_tokens, n, lock, self.lm.caption_tokens)

    def write(
        self,
        instruction: str,
        caption: str,
        settings: EditSettings,
        seed: int,
        *,
        cancel: threading.Event | None = None,
        limit: TokenLimit | None = None,
    ) -> CaptionSet:
        """N before and N after captions for ``instruction``, or the fallback pair.

        ``limit`` (the text encoder's) shortens captions that would not fit it, and refuses
        answers whose lists become the same once shortened.
        """
        template = self.templates.get(settings.template)
        if template is None:
            raise InvalidInput(
                f"Unknown prompt template {settings.template!r}; known: {', '.join(self.template_names)}."
            )
        locked = clean_caption(caption)
        if not is_caption(locked):
            raise InvalidInput("The image description is empty; please describe the image in words.")
        n = settings.num_captions
        prompt = build_prompt(template, instruction, locked, n, settings.caption_lock)
        start = answer_start(locked if settings.caption_lock else None)
        budget = self.budget(n, settings.caption_lock)

        def done(generated: str) -> bool:
            return read_lists(start + generated, n).complete

        attempts = self.lm.max_attempts if self.lm.do_sample else 1
        tokens = 0
        for attempt in range(1, attempts + 1):
            raise_if_cancelled(cancel)
            generation = self.generate_text(
                prompt, seed=seed + attempt - 1, max_new_tokens=budget, done=done, cancel=cancel
            )
            tokens += generation.tokens
            raise_if_cancelled(cancel)
            text = generation.text
            if generation.truncated:
                text = text[: text.rfind("\n") + 1]
            accepted = self._accept(parse_captions(start + text, n), limit)
            if accepted is not None:
                (before, after), shortened = accepted
                return CaptionSet(
                    before,
                    after,
                    used_fallback=False,
                    generate_calls=attempt,
                    tokens=tokens,
                    shortened=shortened,
                )
            log.info("caption attempt %d/%d gave no usable captions", attempt, attempts)
        log.warning("no usable captions after %d attempts; using the fallback captions", attempts)
        before, after = fallback_captions(locked, instruction, limit)
        return CaptionSet(before, after, used_fallback=True, generate_calls=attempts, tokens=tokens)

    @staticmethod
    def _accept(
        parsed: tuple[tuple[str, ...], tuple[str, ...]] | None, limit: TokenLimit | None
    ) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], int] | None:
        """The parsed lists fitted to ``limit``, with the count shortened; None to try again."""
        if parsed is None:
            return None
        fitted_before, fitted_after = (fit_captions(side, limit) for side in parsed)
        if fitted_before is None or fitted_after is None:
            return None
        (before, cut_before), (after, cut_after) = fitted_before, fitted_after
        if same_captions(before, after):
            return None
        return (before, after), cut_before + cut_after


def caption_notes(used_fallback: bool, attempts: int, shortened: int) -> list[str]:
    """What the user should know about the language model's captions."""
    notes = []
    if used_fallback:
        notes.append(
            f"The language model gave no usable captions in {attempts} "
            f"{'try' if attempts == 1 else 'tries'}; the edit used the fallback: before = the image "
            "caption, after = the caption with the instruction appended."
        )
    if shortened:
        notes.append(f"{shortened} of the language model's captions were shortened to fit the text encoder.")
    return notes
