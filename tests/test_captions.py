"""The language-model step: prompts, the tolerant parser, retries, fallback and cancellation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editor.captions import (
    AFTER_HEADING,
    BEFORE_HEADING,
    MAX_CAPTION_CHARS,
    SHIPPED_TEMPLATES,
    CaptionWriter,
    CausalLanguageModel,
    Generation,
    answer_start,
    build_prompt,
    clean_caption,
    format_list,
    load_templates,
    parse_captions,
)
from editor.config import LanguageModelConfig, engine_config, load_yaml
from editor.types import EditCancelled, EditSettings, InvalidInput

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CAPTION = "a cat sitting on a table"
INSTRUCTION = "turn the cat into a dog"

# ---------------------------------------------------------------- parser: well-formed


def _answer(before: list[str], after: list[str], lock: bool = True) -> str:
    """The answer's start (as the prompt ends) plus a model continuation in the usual layout."""
    start = answer_start(CAPTION if lock else None)
    body = "".join(f"{index}. {caption}\n" for index, caption in enumerate(before, 2 if lock else 1))
    return start + body + "\n" + format_list(AFTER_HEADING, tuple(after))


def test_parses_the_prompt_layout_with_the_locked_caption_first() -> None:
    text = _answer(["a cat on a wooden table"], ["a dog sitting on a table", "a dog on a wooden table"])
    assert parse_captions(text, 2) == (
        (CAPTION, "a cat on a wooden table"),
        ("a dog sitting on a table", "a dog on a wooden table"),
    )


def test_parses_without_the_lock() -> None:
    text = _answer(["a cat", "a kitten"], ["a dog", "a puppy"], lock=False)
    assert parse_captions(text, 2) == (("a cat", "a kitten"), ("a dog", "a puppy"))


WELL_FORMED = {
    "markdown bold headings": (
        "**Before transformation:**\n1. a red car\n2. a red car parked\n\n"
        "**After transformation:**\n1. a blue car\n2. a blue car parked\n"
    ),
    "markdown hash headings, bullets": (
        "## Before transformation\n- a red car\n- a red car parked\n"
        "## After Transformation\n- a blue car\n- a blue car parked\n"
    ),
    "short headings, parentheses": (
        "Before:\n1) a red car\n2) a red car parked\nAfter:\n(1) a blue car\n(2) a blue car parked"
    ),
    "upper case, stars and dots": (
        "BEFORE TRANSFORMATION:\n* a red car\n• a red car parked\n"
        "AFTER TRANSFORMATION:\n*   a blue car\n•a blue car parked\n"
    ),
    "plain lines, captions heading": (
        "Captions before transformation (2):\na red car\na red car parked\n"
        "Captions after transformation (2):\na blue car\na blue car parked\n"
    ),
    "quotes and bold numbers": (
        'Before transformation:\n**1.** "a red car"\n2. “a red car parked”\n'
        "After transformation:\n1. 'a blue car'\n2. `a blue car parked`\n"
    ),
    "junk and blank lines": (
        "Sure! Here you go.\n```\nBefore transformation:\n\n1. a red car\n---\n2. a red car parked\n\n\n"
        "After transformation:\n...\n1. a blue car\n3.\n2. a blue car parked\n```\n"
    ),
    "inline first items": (
        "Before: a red car\n2. a red car parked\nAfter transformation: a blue car\n2. a blue car parked\n"
    ),
    "text after the after-list": (
        "Before transformation:\n1. a red car\n2. a red car parked\nAfter transformation:\n"
        "1. a blue car\n2. a blue car parked\n3. a green car\n\nInstruction: make it night\n"
        "Before transformation:\n1. a city\n"
    ),
    "more before captions than asked": (
        "Before transformation:\n1. a red car\n2. a red car parked\n3. a red car again\n"
        "After transformation:\n1. a blue car\n2. a blue car parked\n"
    ),
    "windows line ends": (
        "Before transformation:\r\n1. a red car\r\n2. a red car parked\r\n"
        "After transformation:\r\n1. a blue car\r\n2. a blue car parked"
    ),
}


@pytest.mark.parametrize("text", WELL_FORMED.values(), ids=WELL_FORMED.keys())
def test_tolerates_the_many_ways_models_format_lists(text: str) -> None:
    assert parse_captions(text, 2) == (("a red car", "a red car parked"), ("a blue car", "a blue car parked"))


def test_a_caption_starting_with_after_is_not_a_heading() -> None:
    text = "Before transformation:\n1. a wet street\nAfter transformation:\nAfter the rain, a wet street\n"
    assert parse_captions(text, 1) == (("a wet street",), ("After the rain, a wet street",))


def test_numbered_lines_are_captions_even_when_they_look_like_headings() -> None:
    text = "Before:\n1. After: sunset over a lake\nAfter:\n1. Instruction: manual on a desk\n"
    assert parse_captions(text, 1) == (("After: sunset over a lake",), ("Instruction: manual on a desk",))


def test_quotes_inside_a_caption_are_kept() -> None:
    text = "Before:\n1. 'a' and 'b'\n2. \"stop\" and \"go\"\nAfter:\n1. 'a bus'\n2. a car\n"
    assert parse_captions(text, 2) == (("'a' and 'b'", '"stop" and "go"'), ("a bus", "a car"))


def test_duplicates_are_kept_in_order() -> None:
    text = "Before:\n1. a car\n2. a car\nAfter:\n1. a bus\n2. a car\n"
    assert parse_captions(text, 2) == (("a car", "a car"), ("a bus", "a car"))


def test_long_captions_are_cut_at_a_word_boundary() -> None:
    long_caption = "a very " + "long " * 200 + "caption"
    text = f"Before:\n1. {long_caption}\nAfter:\n1. a bus\n"
    parsed = parse_captions(text, 1)
    assert parsed is not None
    before = parsed[0][0]
    assert len(before) <= MAX_CAPTION_CHARS
    assert long_caption.startswith(before)
    assert before.endswith("long")


# ---------------------------------------------------------------- parser: hostile

HOSTILE = {
    "empty": "",
    "no headings": "1. a red car\n2. a red car parked\n1. a blue car\n2. a blue car parked\n",
    "only the before list": "Before transformation:\n1. a red car\n2. a red car parked\n",
    "too few after captions": "Before:\n1. a red car\n2. a red car parked\nAfter:\n1. a blue car\n",
    "after list first": "After:\n1. a blue car\n2. a blue car parked\nBefore:\n1. a red car\n2. a red car\n",
    "next example before the after list": (
        "Before:\n1. a red car\n2. a red car parked\nInstruction: make it blue\nAfter:\n1. a\n2. b\n"
    ),
    "before heading repeated": (
        "Before:\n1. a red car\nBefore:\n1. a red car parked\nAfter:\n1. a blue car\n2. a blue car\n"
    ),
    "numbers without captions": "Before:\n1.\n2.\nAfter:\n1.\n2.\n",
    "punctuation only": "Before:\n- ...\n- ???\nAfter:\n- !!!\n- ---\n",
    "noise": "p*Ri}HH{Ure+L@[X?Cj=Zfvmk8k&E\nQ(DID#}\x00\ufffd" * 50,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_malformed_answers_give_none(text: str) -> None:
    assert parse_captions(text, 2) is None


# ---------------------------------------------------------------- parser: properties

_BEFORE = st.sampled_from(["Before transformation:", "**Before:**", "before", "BEFORE: a cat", "## Before"])
_AFTER = st.sampled_from(["After transformation:", "**After:**", "after", "AFTER: a dog", "## After"])
_MARKERS = st.sampled_from(["", "1. ", "2) ", "(3) ", "- ", "* ", "• ", "**1.** ", '"', "1."])
_WORDS = st.sampled_from(
    ["a dog", "a cat on a mat", "x" * 300, "After the rain", "...", "Instruction: add a hat"]
)
_ITEM = st.tuples(_MARKERS, st.one_of(_WORDS, st.text(max_size=30))).map("".join)
_JUNK = st.one_of(
    st.sampled_from(["", "---", "Instruction: add a hat", "# Example", "\r", "::"]), st.text(max_size=30)
)
_ANY_LINE = st.one_of(_ITEM, _BEFORE, _AFTER, _JUNK)
_BODY = st.lists(st.one_of(_ITEM, _ITEM, _ITEM, _JUNK), max_size=8)


def _joined(*parts: st.SearchStrategy) -> st.SearchStrategy[str]:
    def join(groups: tuple) -> str:
        return "\n".join(line for group in groups for line in ([group] if isinstance(group, str) else group))

    return st.tuples(*parts).map(join)


#: Continuations shaped like model answers (lists, headings, labels) with arbitrary noise mixed in.
CONTINUATION = st.one_of(
    _joined(_BODY, _AFTER, _BODY, st.lists(_ANY_LINE, max_size=4)),
    st.lists(_ANY_LINE, max_size=10).map("\n".join),
    st.text(max_size=200),
)
NOISY_TEXT = st.one_of(_joined(_BODY, _BEFORE, CONTINUATION), CONTINUATION)
#: Captions that look like headings or labels are still captions when they are list items.
_TRICKY_CAPTIONS = [
    "After: sunset over a lake",
    "Instruction: manual on a desk",
    "Before the storm",
    "# a sign",
]
CAPTIONS = (
    st.one_of(st.sampled_from(_TRICKY_CAPTIONS), st.text(min_size=1, max_size=120))
    .map(clean_caption)
    .filter(lambda c: any(x.isalnum() for x in c))
)


@settings(max_examples=200, deadline=None)
@given(NOISY_TEXT, st.integers(1, 5))
def test_parser_never_raises_and_any_result_has_exactly_n(text: str, n: int) -> None:
    parsed = parse_captions(text, n)
    if parsed is not None:
        before, after = parsed
        assert len(before) == n
        assert len(after) == n
        for caption in before + after:
            assert caption == clean_caption(caption)
            assert any(character.isalnum() for character in caption)
            assert "\n" not in caption
            assert len(caption) <= MAX_CAPTION_CHARS


_NUMBERS = st.sampled_from(["{}. ", "{}) ", "({}) ", "**{}.** "])
_SKIPPED = st.sampled_from(["", "---", "...", "```", "  ", "**"])


@st.composite
def _answers(draw: st.DrawFn) -> tuple[str, int, list[str], list[str]]:
    """A model answer with at least n numbered captions per list, skippable junk between lines
    and anything at all after the after-list; returns (text, n, before, after)."""
    n = draw(st.integers(1, 5))

    def numbered_list(heading: str) -> tuple[list[str], list[str]]:
        captions = draw(st.lists(CAPTIONS, min_size=n, max_size=n + 2))
        lines = [heading]
        for index, caption in enumerate(captions, 1):
            lines += draw(st.lists(_SKIPPED, max_size=2))
            lines.append(draw(_NUMBERS).format(index) + caption)
        return lines, captions

    before_lines, before = numbered_list(draw(_BEFORE.filter(lambda h: ":" not in h or h.endswith(":"))))
    after_lines, after = numbered_list(draw(_AFTER.filter(lambda h: ":" not in h or h.endswith(":"))))
    preamble = draw(st.lists(st.one_of(_SKIPPED, st.just("Sure, here are the captions.")), max_size=2))
    text = "\n".join(preamble + before_lines + after_lines) + "\n" + draw(NOISY_TEXT)
    return text, n, before[:n], after[:n]


@settings(max_examples=150, deadline=None)
@given(_answers())
def test_answers_with_enough_captions_give_exactly_the_first_n(answer: tuple[str, int, list, list]) -> None:
    text, n, before, after = answer
    assert parse_captions(text, n) == (tuple(before), tuple(after))


@settings(max_examples=200, deadline=None)
@given(CAPTIONS, CONTINUATION, st.integers(1, 4))
def test_locked_caption_is_always_first(caption: str, generated: str, n: int) -> None:
    parsed = parse_captions(answer_start(caption) + generated, n)
    assert parsed is None or parsed[0][0] == caption


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(st.lists(CAPTIONS, min_size=n, max_size=n), st.just(n))))
def test_formatted_captions_parse_back(captions_and_n: tuple[list[str], int]) -> None:
    captions, n = captions_and_n
    before, after = tuple(captions), tuple(reversed(captions))
    text = format_list(BEFORE_HEADING, before) + "\n" + format_list(AFTER_HEADING, after)
    assert parse_captions(text, n) == (before, after)


def test_cleaning_is_idempotent_on_examples() -> None:
    for messy in ['  1.  "a cat"  ', "**- a dog**", "(3) ‘a bird’", "•• a fish"]:
        once = clean_caption(messy)
        assert once == clean_caption(once)
        assert once in ("a cat", "a dog", "a bird", "a fish")


# ---------------------------------------------------------------- prompts and templates


def test_shipped_templates() -> None:
    templates = load_templates(SHIPPED_TEMPLATES)
    assert {"zero_shot", "few_shot"} <= set(templates)
    for text in templates.values():
        assert "{instruction}" in text
        assert "{n}" in text


def test_few_shot_examples_follow_the_format_the_parser_reads() -> None:
    text = load_templates(SHIPPED_TEMPLATES)["few_shot"]
    examples = text.split("Instruction:")[1:-1]
    assert len(examples) >= 2
    for example in examples:
        parsed = parse_captions(example, 5)
        assert parsed is not None
        assert parsed[0] != parsed[1]


@pytest.mark.parametrize("template", ["zero_shot", "few_shot"])
def test_locked_prompt_ends_with_the_caption_under_the_before_heading(template: str) -> None:
    text = load_templates(SHIPPED_TEMPLATES)[template]
    prompt = build_prompt(text, "make it {n} snowy", f'  "{CAPTION}"  ', 4, lock=True)
    assert prompt.endswith(f"\n{BEFORE_HEADING}\n1. {CAPTION}\n")
    assert "make it {n} snowy" in prompt  # the instruction is inserted verbatim, never re-expanded
    assert "exactly 4 captions" in prompt
    assert "{instruction}" not in prompt
    assert prompt.count(CAPTION) == 1


def test_unlocked_prompt_ends_at_the_before_heading() -> None:
    prompt = build_prompt("Instruction: {instruction}", "add snow", CAPTION, 3, lock=False)
    assert prompt == f"Instruction: add snow\n{BEFORE_HEADING}\n"


def test_lock_needs_a_caption_with_words() -> None:
    with pytest.raises(ValueError, match="caption lock"):
        build_prompt("Instruction: {instruction}", "add snow", ' "..." ', 3, lock=True)


def test_templates_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no prompt templates"):
        load_templates(tmp_path)
    (tmp_path / "broken.txt").write_text("Write {n} captions.", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.*instruction"):
        load_templates(tmp_path)


# ---------------------------------------------------------------- writer with a scripted model


class ScriptedModel:
    """Plays back prepared continuations; records what it was asked and checks ``done``."""

    def __init__(self, *outputs: str, truncated: bool = False, on_call: Callable[[], None] | None = None):
        self.outputs = list(outputs)
        self.truncated = truncated
        self.on_call = on_call
        self.seeds: list[int] = []
        self.prompts: list[str] = []
        self.done_results: list[bool] = []

    def __call__(
        self, prompt: str, *, seed: int, done: Callable[[str], bool], cancel: threading.Event | None
    ) -> Generation:
        self.seeds.append(seed)
        self.prompts.append(prompt)
        if self.on_call:
            self.on_call()
        text = self.outputs.pop(0)
        self.done_results.append(done(text))
        return Generation(text=text, tokens=len(text.split()), truncated=self.truncated)


GOOD = (
    "2. a cat on a wooden table\n\nAfter transformation:\n1. a dog sitting on a table\n2. a dog on a table\n"
)
SETTINGS = EditSettings(num_captions=2, template="zero_shot")
LM = LanguageModelConfig(max_attempts=3)


def _writer(model: ScriptedModel, lm: LanguageModelConfig = LM) -> CaptionWriter:
    return CaptionWriter(load_templates(SHIPPED_TEMPLATES), lm, model)


def test_retries_until_an_answer_parses() -> None:
    model = ScriptedModel("zzz nonsense", GOOD)
    result = _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=41)
    assert result.before == (CAPTION, "a cat on a wooden table")
    assert result.after == ("a dog sitting on a table", "a dog on a table")
    assert (result.used_fallback, result.generate_calls) == (False, 2)
    assert result.tokens == 2 + len(GOOD.split())
    assert model.seeds == [41, 42]
    assert model.done_results == [False, True]
    assert model.prompts[0].endswith(f"{BEFORE_HEADING}\n1. {CAPTION}\n")


def test_falls_back_after_max_attempts() -> None:
    model = ScriptedModel("nope", "still nope", "2. a cat\nAfter transformation:\n1. a dog\n")
    result = _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=0)
    assert result.used_fallback
    assert result.generate_calls == 3
    assert result.before == (CAPTION,)
    assert result.after == (f"{CAPTION}, {INSTRUCTION}",)
    assert model.seeds == [0, 1, 2]


def test_greedy_decoding_is_tried_once() -> None:
    model = ScriptedModel("nope")
    result = _writer(model, LanguageModelConfig(do_sample=False, max_attempts=5)).write(
        INSTRUCTION, CAPTION, SETTINGS, seed=0
    )
    assert (result.used_fallback, result.generate_calls) == (True, 1)


def test_without_the_lock_the_model_writes_every_before_caption() -> None:
    model = ScriptedModel("1. a cat\n2. a kitten\nAfter transformation:\n1. a dog\n2. a puppy\n")
    result = _writer(model).write(INSTRUCTION, CAPTION, SETTINGS.replace(caption_lock=False), seed=0)
    assert result.before == ("a cat", "a kitten")
    assert model.prompts[0].endswith(f"{BEFORE_HEADING}\n")


@pytest.mark.parametrize(("truncated", "parses"), [(True, False), (False, True)])
def test_a_line_cut_by_the_token_budget_is_not_a_caption(truncated: bool, parses: bool) -> None:
    cut = "2. a cat\nAfter transformation:\n1. a dog\n2. a dog on a ta"
    result = _writer(ScriptedModel(cut, truncated=truncated), LanguageModelConfig(max_attempts=1)).write(
        INSTRUCTION, CAPTION, SETTINGS, seed=0
    )
    assert result.used_fallback is not parses


def test_cancel_before_generation_stops_at_once() -> None:
    cancel = threading.Event()
    cancel.set()
    model = ScriptedModel(GOOD)
    with pytest.raises(EditCancelled):
        _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=0, cancel=cancel)
    assert model.seeds == []


def test_cancel_during_an_attempt_stops_before_the_next() -> None:
    cancel = threading.Event()
    model = ScriptedModel("nope", GOOD, on_call=cancel.set)
    with pytest.raises(EditCancelled):
        _writer(model).write(INSTRUCTION, CAPTION, SETTINGS, seed=0, cancel=cancel)
    assert len(model.seeds) == 1


@pytest.mark.parametrize(
    ("changes", "caption", "message"),
    [({"template": "nonexistent"}, CAPTION, "Unknown prompt template"), ({}, " ** ", "description is empty")],
)
def test_bad_requests_are_refused(changes: dict, caption: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _writer(ScriptedModel(GOOD)).write(INSTRUCTION, caption, SETTINGS.replace(**changes), seed=0)


def test_config_must_allow_an_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _writer(ScriptedModel(), LanguageModelConfig(max_attempts=0))


# ---------------------------------------------------------------- the tiny Phi, loaded for real


@pytest.fixture(scope="module")
def tiny_lm_config(tiny_config: Path) -> LanguageModelConfig:
    return engine_config(load_yaml(tiny_config)).language_model


@pytest.fixture(scope="module")
def tiny_writer(tiny_models_dir: Path, tiny_lm_config: LanguageModelConfig) -> CaptionWriter:
    return CaptionWriter.from_pretrained(
        str(tiny_models_dir / "tiny/phi"), torch.device("cpu"), torch.float32, tiny_lm_config
    )


def test_tiny_phi_noise_falls_back_after_every_attempt(
    tiny_writer: CaptionWriter, tiny_lm_config: LanguageModelConfig
) -> None:
    assert tiny_writer.template_names == ("few_shot", "zero_shot")
    rng_state = torch.get_rng_state()
    result = tiny_writer.write(INSTRUCTION, CAPTION, SETTINGS, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded sampling leaves global RNG alone
    assert result.used_fallback
    assert result.generate_calls == tiny_lm_config.max_attempts
    assert 0 < result.tokens <= tiny_lm_config.max_attempts * tiny_lm_config.max_new_tokens
    assert result.before == (CAPTION,)


def _prompt() -> str:
    return build_prompt("Instruction: {instruction}", INSTRUCTION, CAPTION, 2, lock=True)


def test_tiny_phi_sampling_is_reproducible_per_seed(tiny_writer: CaptionWriter) -> None:
    model = tiny_writer.generate_text
    first, again, other = (model(_prompt(), seed=s, done=lambda _: False, cancel=None) for s in (1, 1, 2))
    assert first == again
    assert first.text != other.text


@contextmanager
def _only_newlines(model: CausalLanguageModel) -> Iterator[int]:
    """Bias the tiny Phi so every token it samples is a newline."""
    newline = model.tokenizer("\n")["input_ids"][0]
    bias = model.model.lm_head.bias
    original = bias.detach().clone()
    with torch.no_grad():
        bias[newline] = 1e4
    try:
        yield newline
    finally:
        with torch.no_grad():
            bias.copy_(original)


def test_generation_stops_when_the_answer_is_complete(tiny_writer: CaptionWriter) -> None:
    model = tiny_writer.generate_text
    seen: list[str] = []

    def done(text: str) -> bool:
        seen.append(text)
        return len(seen) == 3

    with _only_newlines(model):
        stopped = model(_prompt(), seed=0, done=done, cancel=None)
        budget = model(_prompt(), seed=0, done=lambda _: False, cancel=None)
    assert (stopped.tokens, stopped.truncated) == (3, False)
    assert seen == ["\n", "\n\n", "\n\n\n"]
    assert (budget.tokens, budget.truncated) == (tiny_writer.lm.max_new_tokens, True)


def test_generation_stops_on_cancel(tiny_writer: CaptionWriter) -> None:
    cancel = threading.Event()
    cancel.set()
    generation = tiny_writer.generate_text(_prompt(), seed=0, done=lambda _: False, cancel=cancel)
    assert generation.tokens == 1
