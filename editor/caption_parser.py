"""Reading a language model's before/after caption lists, and writing the layout it is asked for.

The model is asked for two numbered lists under "Before transformation:" and "After
transformation:" (:func:`format_list`). Models answer in many near variants; the parser
accepts those whose meaning is unambiguous and refuses the rest, so that a caption is never
a list marker, a label or a sentence about the list:

- headings in any case, with or without colon, markdown or a "Captions" prefix; a heading
  restated inside its own list (the list goes on; repeats of captions already read are
  skipped);
- items numbered (``1.``, ``1)``, ``(1)``, ``1 -``, ``Caption 1:``), lettered (``a)``),
  bulleted or plain; several numbered items on one line are split;
- when a list has marked items, plain lines before the first of them are prose and skipped;
  lines ending in a colon, answer labels (``Output:``) and any other short label
  (``Note: ...``) are never captions; a new example (``Instruction: ...``) ends the lists;
- an after-list equal to the before-list (any order, any case) is refused: it gives a zero
  edit direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BEFORE_HEADING = "Before transformation:"
AFTER_HEADING = "After transformation:"

#: Captions are cut to this many characters (at a word boundary when possible) so that a
#: runaway line cannot flood logs or messages; the text encoder's token limit applies later.
MAX_CAPTION_CHARS = 250

_MARKER = re.compile(
    r"^(?:\(?\d{1,3}[.):]\)?[*_]*(?:\s+|$)"  # 1.  1)  (1)  1:  **1.**
    r"|\d{1,3}\s+[-–—]\s+"  # 1 - caption
    r"|caption\s*\d{1,3}\s*[:.)\-–—]\s*|captions?\s*[:：]\s*"  # Caption 3: caption
    r"|\(?[a-z]\)\s+"  # a) caption  (b) caption
    r"|[-*+–—](?:\s+|$)|[•·▪◦]\s*)",  # bullets
    re.IGNORECASE,
)
_INLINE_ITEM = re.compile(r"(?<!\S)(?:caption\s*)?(\d{1,2})[.):]\s+", re.IGNORECASE)
_BULLET = re.compile(r"[-*+–—•·▪◦]\s")
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
#: Labels that start another example: the answer is over.
_NEW_EXAMPLE = re.compile(
    r"(?:edit\s+)?(?:instruction|input|example|task|question|prompt|exercise)s?\b[^:：]{0,30}[:：]",
    re.IGNORECASE,
)
#: Labels that introduce the answer; what follows them on the line is read on its own.
_ANSWER_LABEL = re.compile(r"(?:output|answer|response|result|solution)s?\s*[:：]\s*", re.IGNORECASE)
#: Any other short label ("Note: ...", "Explanation: ..."): never a caption.
_OTHER_LABEL = re.compile(r"[A-Z][\w'-]*(?:\s+[\w'-]+)?\s*[:：](?:\s|$)")


def clean_caption(text: str) -> str:
    """One tidy caption line: no list marker, wrapping quotes, markup or trailing separator.

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
    return text.rstrip().rstrip(",;").rstrip()


def is_caption(text: str) -> bool:
    """A caption has at least one letter or digit."""
    return any(character.isalnum() for character in text)


def format_list(heading: str, captions: tuple[str, ...]) -> str:
    """A heading and a numbered list, the layout the templates' examples and the parser use."""
    return heading + "\n" + "".join(f"{index}. {caption}\n" for index, caption in enumerate(captions, 1))


def answer_start(locked_caption: str | None) -> str:
    """The before heading, then the locked caption as item 1 when there is one."""
    return format_list(BEFORE_HEADING, (locked_caption,) if locked_caption else ())


@dataclass
class _Side:
    """The items read under one heading: (caption, marked) in order."""

    items: list[tuple[str, bool]] = field(default_factory=list)
    #: Captions read before the heading was restated; repeats of them are skipped.
    seen: frozenset[str] = frozenset()

    def add(self, caption: str, marked: bool) -> None:
        if caption.casefold() not in self.seen:
            self.items.append((caption, marked))

    def captions(self, n: int) -> list[str]:
        """The first ``n`` captions, plain lines before the first marked item left out."""
        first_marked = next((i for i, (_, marked) in enumerate(self.items) if marked), 0)
        return [caption for caption, _ in self.items[first_marked:]][:n]

    def settled(self, n: int) -> bool:
        """No later line can change the first ``n`` captions: they come from a marked list, or
        a plain list already has more than ``n`` lines."""
        marked = any(marked for _, marked in self.items)
        return len(self.captions(n)) == n and (marked or len(self.items) > n)


@dataclass(frozen=True)
class Lists:
    """Up to N captions a side as read so far, and whether more text could change them."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    #: The after-list is settled (N marked items, or a plain line past N), or the answer
    #: moved on to something else: generating more cannot make it better.
    complete: bool


def read_lists(text: str, n: int) -> Lists:
    """Up to ``n`` before and ``n`` after captions, as far as ``text`` has them."""
    sides = {"before": _Side(), "after": _Side()}
    side: str | None = None
    for line in _lines(text):
        kind, rest = _classify(line)
        if kind == "answer" and rest:
            kind, rest = _classify(rest)
        # The text on a heading's own line is its list's first item, however it is written.
        first_item = kind in sides
        if kind in sides:
            if side == kind:
                sides[kind].seen = frozenset(caption.casefold() for caption, _ in sides[kind].items)
            elif (side, kind) not in ((None, "before"), ("before", "after")):
                return _lists(sides, n, complete=True)  # a new answer, or the after-list came first
            side, kind = kind, "item"
        elif kind == "new_example" and side is not None:
            return _lists(sides, n, complete=True)
        if side is None or kind != "item":
            continue
        for item in _split_inline(rest):
            caption = clean_caption(item)
            if is_caption(caption):
                sides[side].add(caption, first_item or _is_marked(item))
        if sides["after"].settled(n):
            return _lists(sides, n, complete=True)
    return _lists(sides, n, complete=False)


def _lists(sides: dict[str, _Side], n: int, *, complete: bool) -> Lists:
    return Lists(tuple(sides["before"].captions(n)), tuple(sides["after"].captions(n)), complete)


def parse_captions(text: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The first ``n`` before and ``n`` after captions in ``text``, or None.

    ``text`` is the answer's start plus the generation. None when a heading is missing,
    either list has fewer than ``n`` captions, or the two lists hold the same captions.
    """
    lists = read_lists(text, n)
    before, after = lists.before, lists.after
    if len(before) < n or len(after) < n or same_captions(before, after):
        return None
    return before, after


def same_captions(before: list[str] | tuple[str, ...], after: list[str] | tuple[str, ...]) -> bool:
    """The same captions in any order and case: their mean embeddings, and so the direction, agree."""
    return sorted(_caseless(c) for c in before) == sorted(_caseless(c) for c in after)


def _caseless(caption: str) -> str:
    """Case folded after upper-casing, so letters like the dotless ı meet their capitals (I)."""
    return caption.upper().casefold()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _classify(line: str) -> tuple[str, str]:
    """(kind, rest): a heading ("before" | "after") with its inline rest, "answer" with the
    rest after the label, "new_example", "skip" (labels, intros, rules), or "item"."""
    bare = line.lstrip(_DECORATION)  # numbered lines keep their digit, so they never match a heading
    heading = _HEADING.fullmatch(bare)
    # "- After: sunset over a lake" is a bulleted caption; "- After transformation:" a heading.
    bulleted_text = heading and heading["rest"] and _BULLET.match(line)
    if heading and (heading["colon"] or not heading["rest"]) and not bulleted_text:
        return heading["side"].lower(), heading["rest"]
    if _is_marked(line):
        return "item", line
    if _NEW_EXAMPLE.match(bare) or line.startswith("#"):
        return "new_example", ""
    answer = _ANSWER_LABEL.match(bare)
    if answer:
        return "answer", bare[answer.end() :]
    if _OTHER_LABEL.match(bare) or line.endswith((":", "：")):
        return "skip", ""
    return "item", line


def _is_marked(line: str) -> bool:
    return bool(_MARKER.match(line) or _MARKER.match(line.lstrip(_EMPHASIS + " ")))


def _split_inline(line: str) -> list[str]:
    """``1. a dog 2. a puppy`` as two items; any other line as itself.

    Only a run of consecutive numbers starting the line is split, so a number inside a
    caption ("a 2. class ticket") stays where it is.
    """
    markers = list(_INLINE_ITEM.finditer(line))
    if len(markers) < 2 or markers[0].start() != 0:
        return [line]
    numbers = [int(marker[1]) for marker in markers]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return [line]
    ends = [marker.start() for marker in markers[1:]] + [len(line)]
    return [line[marker.start() : end].strip() for marker, end in zip(markers, ends, strict=True)]
