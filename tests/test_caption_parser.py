"""The caption parser: a corpus of Phi-2-style answers, well-formed and hostile, and properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from editor.caption_parser import (
    AFTER_HEADING,
    BEFORE_HEADING,
    MAX_CAPTION_CHARS,
    answer_start,
    clean_caption,
    format_list,
    parse_captions,
    same_captions,
)
from tests.phi2_answers import CAPTION, LOCKED, PHI2_EXPECTED, PHI2_HOSTILE, PHI2_WELL_FORMED

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
    "before heading restated": (
        "Before:\n1. a red car\nBefore:\n1. a red car\n2. a red car parked\n"
        "After:\n1. a blue car\n2. a blue car parked\n"
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
    # "a 2. b" after "1. " would read as an inline list of two: a real ambiguity, left out.
    .filter(lambda c: not re.search(r"(?<!\S)\d{1,2}[.):]\s", c))
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
        assert not same_captions(before, after)


_NUMBERS = st.sampled_from(["{}. ", "{}) ", "({}) ", "**{}.** ", "Caption {}: ", "{} - "])
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
    assume(not same_captions(before[:n], after[:n]))
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


def _two_lists(n: int) -> st.SearchStrategy[tuple[tuple[str, ...], tuple[str, ...]]]:
    side = st.lists(CAPTIONS, min_size=n, max_size=n).map(tuple)
    return st.tuples(side, side).filter(lambda lists: not same_captions(*lists))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(_two_lists(n), st.just(n))))
def test_formatted_captions_parse_back(lists_and_n: tuple) -> None:
    (before, after), n = lists_and_n
    text = format_list(BEFORE_HEADING, before) + "\n" + format_list(AFTER_HEADING, after)
    assert parse_captions(text, n) == (before, after)


def test_cleaning_is_idempotent_on_examples() -> None:
    for messy in ['  1.  "a cat"  ', "**- a dog**", "(3) ‘a bird’", "•• a fish"]:
        once = clean_caption(messy)
        assert once == clean_caption(once)
        assert once in ("a cat", "a dog", "a bird", "a fish")


# ---------------------------------------------------------------- a corpus of Phi-2-style answers


@pytest.mark.parametrize("generated", PHI2_WELL_FORMED.values(), ids=PHI2_WELL_FORMED.keys())
def test_phi2_style_answers_are_read_without_markers_or_labels(generated: str) -> None:
    assert parse_captions(LOCKED + generated, 2) == PHI2_EXPECTED


@pytest.mark.parametrize("generated", PHI2_HOSTILE.values(), ids=PHI2_HOSTILE.keys())
def test_phi2_style_hostile_answers_are_refused(generated: str) -> None:
    assert parse_captions(LOCKED + generated, 2) is None


# ---------------------------------------------------------------- properties of the fixes

_MARKER_STYLES = [
    "{}. ",
    "{}) ",
    "({}) ",
    "Caption {}: ",
    "caption {} - ",
    "{} - ",
    "{letter}) ",
    "({letter}) ",
    "- ",
    "* ",
    "• ",
]


@st.composite
def _marked_answers(draw: st.DrawFn) -> tuple[str, int, tuple[str, ...], tuple[str, ...]]:
    """Two lists in one marker style, with labels, intros and prose lines before the items."""
    n = draw(st.integers(1, 5))
    before, after = draw(_two_lists(n))
    style = draw(st.sampled_from(_MARKER_STYLES))
    noise = st.lists(
        st.sampled_from(
            ["Note: keep the layout", "Summary: a change", "Here they are:", "Output:", "Explanation: none"]
        ),
        max_size=2,
    )

    def listed(heading: str, captions: tuple[str, ...]) -> list[str]:
        lines = [heading, *draw(noise)]
        if draw(st.booleans()):
            lines.append("These describe the picture")  # prose before the first marked item
        for index, caption in enumerate(captions, 1):
            lines.append(style.format(index, letter="abcde"[index - 1]) + caption)
            lines += draw(noise)
        return lines

    text = "\n".join(listed(BEFORE_HEADING, before) + listed(AFTER_HEADING, after))
    return text, n, before, after


@settings(max_examples=200, deadline=None)
@given(_marked_answers())
def test_markers_labels_and_prose_never_become_captions(answer: tuple) -> None:
    text, n, before, after = answer
    assert parse_captions(text, n) == (before, after)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.lists(CAPTIONS, min_size=n, max_size=n)), st.randoms())
def test_the_same_captions_in_any_order_or_case_are_refused(captions: list[str], random) -> None:
    after = [caption.upper() if random.random() < 0.5 else caption for caption in captions]
    random.shuffle(after)
    text = format_list(BEFORE_HEADING, tuple(captions)) + format_list(AFTER_HEADING, tuple(after))
    assert parse_captions(text, len(captions)) is None


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(_two_lists(n), st.just(n))))
def test_inline_numbered_lists_read_like_one_item_a_line(lists_and_n: tuple) -> None:
    (before, after), n = lists_and_n
    inline = " ".join(f"{index}. {caption}" for index, caption in enumerate(after, 1))
    text = format_list(BEFORE_HEADING, before) + f"{AFTER_HEADING} {inline}\n"
    assert parse_captions(text, n) == (before, after)
