"""BLIP describes the input image; the caption anchors both the inversion and the LM prompt.

Decoding is deterministic (beam search, no sampling), as in the BLIP "base_coco" setup
the paper uses, so the same image always gets the same caption and its cached inversion
stays valid. A model that produces no text (possible with tiny or damaged weights) yields
``FALLBACK_CAPTION`` instead of an empty string, which no later step could use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from PIL import Image

if TYPE_CHECKING:
    from transformers import BlipForConditionalGeneration, BlipProcessor

#: Used when BLIP returns nothing readable.
FALLBACK_CAPTION = "an image"

#: BLIP base captions are about ten words; this only bounds a runaway decode.
MAX_NEW_TOKENS = 30

#: Beam width of the reference BLIP captioner.
NUM_BEAMS = 3


class Captioner:
    """A BLIP captioning model and its processor, on one device."""

    def __init__(
        self,
        processor: BlipProcessor,
        model: BlipForConditionalGeneration,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device | str, dtype: torch.dtype) -> Captioner:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        processor = BlipProcessor.from_pretrained(path)
        model = BlipForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        return cls(processor, model, torch.device(device), dtype)

    @torch.inference_mode()
    def caption(self, image: Image.Image) -> str:
        """One line describing ``image`` (RGB); never empty."""
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device, self.dtype)
        output = self.model.generate(
            pixel_values=inputs["pixel_values"],
            max_new_tokens=MAX_NEW_TOKENS,
            num_beams=NUM_BEAMS,
            do_sample=False,
        )
        text = self.processor.decode(output[0], skip_special_tokens=True)
        return " ".join(text.split()) or FALLBACK_CAPTION
