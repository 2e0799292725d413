"""The language-model step: N captions before and N after the instruction's transformation.

A prompt template (a ``.txt`` file with ``{instruction}`` and ``{n}`` placeholders) is
followed by the answer's start, which this module writes itself so that prompt, stopping
rule and parser agree on one format::

    Before transformation:
    1. <BLIP caption>          <- only with the caption lock

With the caption lock (the paper's trick) the language model continues from a true
description of the image, and the parser reads the answer's start plus the generated
text, so the locked caption is always ``before[0]``. Without the lock the prompt ends at
the heading.

Generation is bounded: at most ``max_new_tokens`` per attempt, and it stops as soon as
the after-list holds N complete lines. Sampling is seeded per edit (the first attempt
uses ``seed``, the next ``seed + 1`` and so on), so retries differ yet every edit is
reproducible; the process-wide RNG is left as it was. An answer that does not parse is
retried, up to ``max_attempts`` attempts (one when sampling is off: greedy decoding would
only repeat itself).

Fallback, when no attempt parses: before = (caption,) and after =
("<caption>, <instruction>",). The after caption then differs from the before caption
exactly by the instruction's words, so the CLIP edit direction still points at the
requested change, only less precisely than N paraphrases would.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from editor.config import LanguageModelConfig
from editor.types import EditSettings, InvalidInput, raise_if_cancelled

if TYPE_CHECKING:
    from collections.abc import Iterator

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

BEFORE_HEADING = "Before transformation:"
AFTER_HEADING = "After transformation:"

#: Captions are cut to this many characters (at a word boundary when possible):
#: CLIP reads 77 tokens anyway, and a runaway line must not flood logs or messages.
MAX_CAPTION_CHARS = 250

#: The prompt templates shipped with the project.
SHIPPED_TEMPLATES = Path(__file__).with_name("prompts")

_PLACEHOLDER = re.compile(r"\{(instruction|n)\}")
_MARKER = re.compile(r"^(?:\(?\d{1,3}[.):]\)?[*_]*(?:\s+|$)|[-*+–—](?:\s+|$)|[•·▪◦]\s*)")
_DECORATION = "*_`#>-•· \t"
_EMPHASIS = "*_`"
_QUOTES = "\"'“”‘’«»„"
_HEADING = re.compile(
    r"(?:captions?\s+)?(?P<side>before|after)"
    r"(?:[\s_-]+(?:the\s+)?(?:transformation|edit|editing|change))?"
    r"(?:\s+captions?)?\s*(?:\([^)]{0,40}\))?"
    r"[\s*_`]*(?P<colon>[:：])?[\s*_`]*(?P<rest>.*)",
    re.IGNORECASE,
)
_LABEL = re.compile(
    r"(?:edit\s+)?(?:instruction|input|output|example|task|note|explanation|answer|question|prompt|"
    r"description|result)s?\b[^:：]{0,30}[:：]",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class CaptionSet:
    """What the language model step produced, and what it cost.

    ``generate_calls`` counts the calls to the model's ``generate`` (one per attempt at a
    well-formed answer), so the engine's counts need no knowledge of the retry policy.
    """

    before: tuple[str, ...]
    after: tuple[str, ...]
    used_fallback: bool
    generate_calls: int
    tokens: int


@dataclass(frozen=True)
class Generation:
    """One continuation of a prompt."""

    text: str
    tokens: int
    #: The token budget ran out, so the last line may be cut short.
    truncated: bool


class TextGenerator(Protocol):
    """Continue ``prompt``; stop early once ``done(text_so_far)`` or ``cancel`` is set."""

    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        done: Callable[[str], bool],
        cancel: threading.Event | None,
    ) -> Generation: ...


def clean_caption(text: str) -> str:
    """One tidy caption line: no list marker, wrapping quotes or markup, bounded length.

    Applied until nothing changes, so cleaning a cleaned caption gives it back unchanged.
    """
    previous = None
    while text != previous:
        previous = text
        text = _clean_once(text)
    return text


def _clean_once(text: str) -> str:
    text = " ".join(text.split()).strip(_EMPHASIS + " ")
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        inner = text[1:-1]
        if not any(quote in inner for quote in _QUOTES):
            text = inner.strip()
    text = _MARKER.sub("", text, count=1)
    if len(text) > MAX_CAPTION_CHARS:
        cut = text[:MAX_CAPTION_CHARS]
        space = cut.rfind(" ")
        text = cut[:space] if space > MAX_CAPTION_CHARS // 2 else cut
    return text.rstrip()


def _is_caption(text: str) -> bool:
    return any(character.isalnum() for character in text)


def answer_start(locked_caption: str | None) -> str:
    """The before heading, then the locked caption as item 1 when there is one."""
    return format_list(BEFORE_HEADING, (locked_caption,) if locked_caption else ())


def format_list(heading: str, captions: tuple[str, ...]) -> str:
    """A heading and a numbered list, the layout the templates' examples and the parser use."""
    return heading + "\n" + "".join(f"{index}. {caption}\n" for index, caption in enumerate(captions, 1))


def build_prompt(template_text: str, instruction: str, caption: str, n: int, lock: bool) -> str:
    """The template with its placeholders filled, ending where the model's answer begins."""
    values = {"instruction": " ".join(instruction.split()), "n": str(n)}
    body = _PLACEHOLDER.sub(lambda match: values[match.group(1)], template_text).rstrip()
    locked = clean_caption(caption) if lock else None
    if lock and not (locked and _is_caption(locked)):
        raise ValueError("the caption lock needs a caption with words in it")
    return body + "\n" + answer_start(locked)


def parse_captions(text: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The first ``n`` before and ``n`` after captions in ``text``, or None.

    ``text`` is the answer's start plus the generation. Headings may take any case,
    colons and markdown; items may be numbered, bulleted or plain lines. Empty lines and
    lines without letters or digits are skipped; a new example (``Instruction: ...``) or a
    repeated heading ends a list. Text after the n-th after caption is ignored. None when
    a heading is missing or either list has fewer than ``n`` captions.
    """
    lists: dict[str, list[str]] = {"before": [], "after": []}
    side: str | None = None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        kind, rest = _classify(line)
        if kind in lists:
            starts_next_list = (side, kind) in ((None, "before"), ("before", "after"))
            repeats_heading = side == kind and not lists[kind]
            if not (starts_next_list or repeats_heading):
                break  # a new answer begins, or the after-list came first
            side = kind
            line = rest
        elif kind == "label":
            if side is not None:
                break
            continue
        if side is None:
            continue
        caption = clean_caption(line)
        if _is_caption(caption) and len(lists[side]) < n:
            lists[side].append(caption)
        if len(lists["after"]) == n:
            break
    if len(lists["before"]) < n or len(lists["after"]) < n:
        return None
    return tuple(lists["before"]), tuple(lists["after"])


def _classify(line: str) -> tuple[str, str]:
    """("before" | "after", inline rest), ("label", ""), or ("item", line)."""
    bare = line.lstrip(_DECORATION)  # numbered lines keep their digit, so they never match below
    heading = _HEADING.fullmatch(bare)
    if heading and (heading["colon"] or not heading["rest"]):
        return heading["side"].lower(), heading["rest"]
    if _LABEL.match(bare) or line.startswith("#"):
        return "label", ""
    return "item", line


def fallback_captions(caption: str, instruction: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The caption alone before; the caption with the instruction appended after."""
    return (caption,), (clean_caption(f"{caption}, {instruction}"),)


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
        if lm.max_attempts < 1 or lm.max_new_tokens < 1:
            raise ValueError("language_model.max_attempts and max_new_tokens must be at least 1")
        self.templates = dict(templates)
        self.lm = lm
        self.generate_text = generate_text

    @classmethod
    def from_pretrained(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, lm: LanguageModelConfig
    ) -> CaptionWriter:
        templates = load_templates(lm.templates_dir or SHIPPED_TEMPLATES)
        return cls(templates, lm, CausalLanguageModel.from_pretrained(path, device, dtype, lm))

    @property
    def template_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.templates))

    def write(
        self,
        instruction: str,
        caption: str,
        settings: EditSettings,
        seed: int,
        cancel: threading.Event | None = None,
    ) -> CaptionSet:
        """N before and N after captions for ``instruction``, or the fallback pair."""
        template = self.templates.get(settings.template)
        if template is None:
            raise InvalidInput(
                f"Unknown prompt template {settings.template!r}; known: {', '.join(self.template_names)}."
            )
        locked = clean_caption(caption)
        if not _is_caption(locked):
            raise InvalidInput("The image description is empty; please describe the image in words.")
        n = settings.num_captions
        prompt = build_prompt(template, instruction, locked, n, settings.caption_lock)
        start = answer_start(locked if settings.caption_lock else None)

        def done(generated: str) -> bool:
            return parse_captions(start + generated, n) is not None

        attempts = self.lm.max_attempts if self.lm.do_sample else 1
        tokens = 0
        for attempt in range(1, attempts + 1):
            raise_if_cancelled(cancel)
            generation = self.generate_text(prompt, seed=seed + attempt - 1, done=done, cancel=cancel)
            tokens += generation.tokens
            raise_if_cancelled(cancel)
            text = generation.text
            if generation.truncated:
                text = text[: text.rfind("\n") + 1]
            parsed = parse_captions(start + text, n)
            if parsed is not None:
                before, after = parsed
                return CaptionSet(before, after, used_fallback=False, generate_calls=attempt, tokens=tokens)
            log.info("caption attempt %d/%d did not parse", attempt, attempts)
        log.warning("no well-formed captions after %d attempts; using the fallback captions", attempts)
        before, after = fallback_captions(locked, instruction)
        return CaptionSet(before, after, used_fallback=True, generate_calls=attempts, tokens=tokens)


class CausalLanguageModel:
    """Phi-2 (or any causal LM) behind the :class:`TextGenerator` interface."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        device: torch.device,
        lm: LanguageModelConfig,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.lm = lm

    @classmethod
    def from_pretrained(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, lm: LanguageModelConfig
    ) -> CausalLanguageModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        return cls(tokenizer, model.to(device).eval(), torch.device(device), lm)

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        done: Callable[[str], bool],
        cancel: threading.Event | None,
    ) -> Generation:
        from transformers import StoppingCriteriaList

        inputs = self.tokenizer(prompt, return_tensors="pt")
        input_ids = inputs["input_ids"].to(self.device)
        prompt_length = input_ids.shape[1]
        stopper = _StopWhenDone(self.tokenizer, prompt_length, done, cancel)
        sampling = {"temperature": self.lm.temperature, "top_p": self.lm.top_p} if self.lm.do_sample else {}
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        with self._seeded(seed):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=inputs["attention_mask"].to(self.device),
                max_new_tokens=self.lm.max_new_tokens,
                do_sample=self.lm.do_sample,
                stopping_criteria=StoppingCriteriaList([stopper]),
                eos_token_id=eos,
                pad_token_id=pad,
                **sampling,
            )
        generated = output[0, prompt_length:]
        ended_itself = stopper.stopped or (len(generated) > 0 and int(generated[-1]) == eos)
        return Generation(
            text=self.tokenizer.decode(generated, skip_special_tokens=True),
            tokens=len(generated),
            truncated=not ended_itself,
        )

    @contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Seed sampling for one call without disturbing anyone else's random numbers."""
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield


@dataclass
class _StopWhenDone:
    """A stopping criterion: stop on cancel, or once the complete lines so far parse.

    The text is only re-parsed when a new line has been completed, so the cost stays
    negligible next to a forward pass.
    """

    tokenizer: PreTrainedTokenizerBase
    prompt_length: int
    done: Callable[[str], bool]
    cancel: threading.Event | None
    stopped: bool = False
    _lines_seen: int = field(default=0, init=False)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.Tensor:
        stop = self.cancel is not None and self.cancel.is_set()
        if not stop:
            text = self.tokenizer.decode(input_ids[0, self.prompt_length :], skip_special_tokens=True)
            lines = text.count("\n")
            if lines > self._lines_seen:
                self._lines_seen = lines
                stop = self.done(text[: text.rfind("\n") + 1])
        self.stopped = self.stopped or stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
