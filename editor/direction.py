"""The edit direction: where the instruction moves the image in CLIP text-embedding space.

Captions are encoded exactly as Stable Diffusion encodes a prompt (padded to the
tokenizer's 77 tokens, full-sequence last hidden state), so the direction can be added
to the UNet's conditioning as is. Averaging several captions per side cancels their
individual wording and keeps what they share: the change the instruction asks for.

The encoder reads 77 tokens, start and end included, and drops the rest. A caption cut
there silently can lose exactly the words that differ between before and after (a zero
direction), so :class:`ClipTokenLimit` measures captions in the encoder's own tokens and
shortens them at a word boundary first, where the caller can see and say it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

#: Captions encoded per text-encoder call: bounds memory for long caption lists.
BATCH_SIZE = 16


class ClipTokenLimit:
    """The text encoder's token limit on one caption, and shortening to it at a word boundary."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        #: Tokens a caption may have: the encoder's window less its start and end tokens.
        self.limit = tokenizer.model_max_length - 2

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def shorten(self, text: str, limit: int | None = None) -> str | None:
        """``text`` if it fits, else its longest run of whole leading words that does (trailing
        separators dropped); None when not even the first word fits."""
        limit = self.limit if limit is None else limit
        if self.count(text) <= limit:
            return text
        words = text.split()
        low, high = 0, len(words) - 1  # the answer is a word count in [low, high]
        while low < high:
            middle = (low + high + 1) // 2
            if self.count(" ".join(words[:middle])) <= limit:
                low = middle
            else:
                high = middle - 1
        shortened = " ".join(words[:low]).rstrip(",;:-–— ")
        return shortened or None


@torch.no_grad()
def encode_captions(
    tokenizer: PreTrainedTokenizerBase, text_encoder: CLIPTextModel, captions: Sequence[str]
) -> torch.Tensor:
    """``[len(captions), 77, dim]`` prompt embeddings on the encoder's device and dtype."""
    if isinstance(captions, str) or not captions:
        raise ValueError("encode_captions needs a non-empty sequence of captions")
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
    chunks = []
    for start in range(0, len(captions), BATCH_SIZE):
        tokens = tokenizer(
            list(captions[start : start + BATCH_SIZE]),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(text_encoder.device) if use_mask else None
        chunks.append(text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=mask)[0])
    return torch.cat(chunks)


def edit_direction(before_embeds: torch.Tensor, after_embeds: torch.Tensor) -> torch.Tensor:
    """``mean(after) - mean(before)`` over the caption axis, as ``[1, tokens, dim]``.

    The two sides may hold different numbers of captions (the fallback has one each).
    The means are taken in float32 so half-precision embeddings lose nothing to rounding.
    """
    if before_embeds.dim() != 3 or after_embeds.dim() != 3:
        raise ValueError(
            "caption embeddings must be [captions, tokens, dim], got "
            f"{tuple(before_embeds.shape)} and {tuple(after_embeds.shape)}"
        )
    if before_embeds.shape[1:] != after_embeds.shape[1:]:
        raise ValueError(
            f"before and after embeddings differ in shape: {tuple(before_embeds.shape)} "
            f"vs {tuple(after_embeds.shape)}"
        )
    if not len(before_embeds) or not len(after_embeds):
        raise ValueError("the edit direction needs at least one caption on each side")
    after_mean = after_embeds.float().mean(dim=0, keepdim=True)
    before_mean = before_embeds.float().mean(dim=0, keepdim=True)
    return (after_mean - before_mean).to(after_embeds.dtype)
