"""A corpus of Phi-2-style continuations of the locked prompt, well-formed and hostile (N=2).

Written after the shapes Phi-2 answers in: our numbered layout, the paper's "Caption k:"
lines, other markers, restated headings, answer labels, prose and notes around the lists,
inline lists, markdown, and a new example or exercise after the answer.
"""

from __future__ import annotations

from editor.caption_parser import answer_start

CAPTION = "a cat sitting on a table"
LOCKED = answer_start(CAPTION)
#: Continuations of the locked prompt in the shapes Phi-2 writes, each with what must be read (N=2).
PHI2_WELL_FORMED = {
    "our layout, then a new example": (
        "2. a cat lying on a wooden table\n\nAfter transformation:\n1. a dog sitting on a table\n"
        "2. a dog lying on a wooden table\n\nInstruction: make it night\nBefore transformation:\n1. a"
    ),
    "the paper's 'Caption k:' markers": (
        "Caption 2: a cat lying on a wooden table\n\nAfter transformation:\n\n"
        "Caption 1: a dog sitting on a table\nCaption 2: a dog lying on a wooden table\n"
    ),
    "'k - ' markers": (
        "2 - a cat lying on a wooden table\nAfter transformation:\n1 - a dog sitting on a table\n"
        "2 - a dog lying on a wooden table\n"
    ),
    "lettered items": (
        "b) a cat lying on a wooden table\nAfter transformation:\na) a dog sitting on a table\n"
        "(b) a dog lying on a wooden table\n"
    ),
    "before heading restated with the caption": (
        f"Before transformation:\n1. {CAPTION}\n2. a cat lying on a wooden table\n\n"
        "After transformation:\n1. a dog sitting on a table\n2. a dog lying on a wooden table\n"
    ),
    "an Output: line": (
        "2. a cat lying on a wooden table\nOutput:\nAfter transformation:\n"
        "1. a dog sitting on a table\n2. a dog lying on a wooden table\n"
    ),
    "Output: with the heading on its line": (
        "2. a cat lying on a wooden table\nOutput: After transformation:\n"
        "1. a dog sitting on a table\n2. a dog lying on a wooden table\n"
    ),
    "a prose line before the after-list": (
        "2. a cat lying on a wooden table\n\nAfter transformation:\nHere the cat has become a dog\n"
        "1. a dog sitting on a table\n2. a dog lying on a wooden table\n"
    ),
    "an intro ending in a colon": (
        "2. a cat lying on a wooden table\nAfter transformation:\nThe captions after the change are:\n"
        "1. a dog sitting on a table\n2. a dog lying on a wooden table\n"
    ),
    "an inline after-list": (
        "2. a cat lying on a wooden table\n"
        "After transformation: 1. a dog sitting on a table, 2. a dog lying on a wooden table\n"
    ),
    "a note inside the list": (
        "2. a cat lying on a wooden table\nNote: the table stays the same.\nAfter transformation:\n"
        "1. a dog sitting on a table\nExplanation: only the animal changes\n"
        "2. a dog lying on a wooden table\n"
    ),
    "markdown and a textbook exercise after": (
        "2. **a cat lying on a wooden table**\n\n**After transformation:**\n1. *a dog sitting on a table*\n"
        "2. `a dog lying on a wooden table`\n\n## Exercise 2\nWrite captions for"
    ),
}
PHI2_EXPECTED = (
    (CAPTION, "a cat lying on a wooden table"),
    ("a dog sitting on a table", "a dog lying on a wooden table"),
)

PHI2_HOSTILE = {
    "after-list equal to the before-list": (
        "2. a cat lying on a wooden table\nAfter transformation:\n1. a cat sitting on a table\n"
        "2. a cat lying on a wooden table\n"
    ),
    "the same captions reordered and recased": (
        "2. a cat lying on a wooden table\nAfter transformation:\n1. A cat lying on a wooden table\n"
        "2. A Cat Sitting On A Table\n"
    ),
    "only labels after the heading": (
        "2. a cat lying on a wooden table\nAfter transformation:\nSummary: a dog instead of a cat\n"
        "Image: a dog on a table\n"
    ),
    "a new example before the after-list": (
        "2. a cat lying on a wooden table\nInstruction: make it a dog\n"
        "After transformation:\n1. a dog\n2. a pup\n"
    ),
    "markers without captions": (
        "2. a cat lying on a wooden table\nAfter transformation:\nCaption 1:\nCaption 2:\n"
    ),
    "the before-list again instead of the after-list": (
        "2. a cat lying on a wooden table\n3. a cat on a table\nBefore transformation:\n1. a cat\n"
    ),
    "prose only": "The cat is now a dog. The table is unchanged, and so is the light in the room.\n",
    "the after-list cut short": (
        "2. a cat lying on a wooden table\nAfter transformation:\n1. a dog sitting on a"
    ),
}
