"""Moderation: blocked words and patterns in instructions, and an optional check of results.

The result check uses Stable Diffusion's own safety checker (a CLIP vision model compared
with fixed concept embeddings). It is loaded on first use only, so a bot where no server
turns it on never needs its weights, and it runs on its own thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from handlers.discord.errors import BadRequest

BLOCKED = (
    "I can't make that edit: the instruction contains something this bot's moderators have blocked. "
    "Please rephrase it."
)


#: Letters of other scripts that look like Latin ones (after case folding), as people use them
#: to slip a blocked word past a filter: Cyrillic and Greek look-alikes.
_LOOKALIKES = str.maketrans(
    "аеорсухіјѕԁһӏԛԝкмтвнпьαβεικνορτυχγηζμω",
    "aeopcyxijsdhlqwkmtbhnbabeikvoptuxyhzmw",
)


def skeleton(text: str) -> str:
    """How ``text`` reads to the eye: case folded, accents dropped, look-alike letters made Latin."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_LOOKALIKES)


class InstructionFilter:
    """Refuses instructions containing a blocked word (whole word, any case) or matching a pattern.

    Instructions arrive normalised (``normalise_instruction``: no zero-width characters, NFKC);
    each is checked as written and as its :func:`skeleton`, so look-alike letters don't help.
    """

    def __init__(self, words: Iterable[str], patterns: Iterable[str]) -> None:
        alternatives = [re.escape(word.strip()) for word in words if word.strip()]
        self._words = (
            re.compile(rf"\b(?:{'|'.join(alternatives)})\b", re.IGNORECASE) if alternatives else None
        )
        self._patterns = [re.compile(pattern, re.IGNORECASE) for pattern in patterns]

    def check(self, instruction: str) -> None:
        """Raise :class:`BadRequest` (with a message for the user) when the instruction is blocked."""
        for reading in {instruction, skeleton(instruction)}:
            if self._words is not None and self._words.search(reading):
                raise BadRequest(BLOCKED)
            if any(pattern.search(reading) for pattern in self._patterns):
                raise BadRequest(BLOCKED)


class SafetyChecker:
    """``await checker.is_unsafe(png)``: Stable Diffusion's safety checker on one image."""

    def __init__(self, model: str) -> None:
        self._model_name = model
        self._model: Any = None
        self._processor: Any = None
        self._load_lock = threading.Lock()
        # One thread: the model is used by one caller at a time, never on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safety-check")

    async def is_unsafe(self, png: bytes) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._check, png)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor

            self._processor = CLIPImageProcessor.from_pretrained(self._model_name)
            self._model = StableDiffusionSafetyChecker.from_pretrained(self._model_name).eval()

    def _check(self, png: bytes) -> bool:
        import numpy as np
        import torch
        from PIL import Image

        self._load()
        with Image.open(io.BytesIO(png)) as opened:
            image = opened.convert("RGB")
        clip_input = self._processor(images=image, return_tensors="pt").pixel_values
        pixels = np.asarray(image, dtype=np.float32)[None] / 255.0
        with torch.no_grad():
            _, flagged = self._model(clip_input=clip_input, images=pixels)
        return bool(flagged[0])
