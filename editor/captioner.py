"""BLIP describes the input image; the caption anchors both the inversion and the LM prompt.

Decoding is deterministic (beam search, no sampling), so the same image always gets the
same caption and its cached inversion stays valid. The paper's code (LAVIS BLIP
``base_coco``) writes a prompt, "a picture of ", before the caption and strips it after,
with 3 beams, at most 30 and at least 10 tokens counting the prompt; ``CaptionerConfig``
defaults to exactly that (the hub checkpoint was fine-tuned with the same prompt). A model
that produces no text (possible with tiny or damaged weights) yields ``FALLBACK_CAPTION``
instead of an empty string, which no later step could use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from PIL import Image

from editor.config import CaptionerConfig

if TYPE_CHECKING:
    from transformers import BlipForConditionalGeneration, BlipProcessor

#: Used when BLIP returns nothing readable.
FALLBACK_CAPTION = "an image"


class Captioner:
    """A BLIP captioning model and its processor, on one device."""

    def __init__(
        self,
        processor: BlipProcessor,
        model: BlipForConditionalGeneration,
        device: torch.device,
        dtype: torch.dtype,
        config: CaptionerConfig,
    ) -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.dtype = dtype
        self.config = config

    @classmethod
    def from_pretrained(
        cls, path: str, device: torch.device | str, dtype: torch.dtype, config: CaptionerConfig
    ) -> Captioner:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        processor = BlipProcessor.from_pretrained(path)
        model = BlipForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        return cls(processor, model, torch.device(device), dtype, config)

    @torch.inference_mode()
    def caption(self, image: Image.Image) -> str:
        """One line describing ``image`` (RGB), without the prompt; never empty."""
        prompt = self.config.prompt.strip()
        inputs = self.processor(images=image.convert("RGB"), text=prompt or None, return_tensors="pt")
        inputs = inputs.to(self.device, self.dtype)
        output = self.model.generate(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs.get("input_ids"),
            max_length=self.config.max_length,
            min_length=self.config.min_length,
            num_beams=self.config.num_beams,
            do_sample=False,
        )
        text = " ".join(self.processor.decode(output[0], skip_special_tokens=True).split())
        # BLIP's tokenizer lower-cases, so the prompt comes back lower-cased.
        if prompt and text.lower().startswith(prompt.lower()):
            text = text[len(prompt) :].strip()
        return text or FALLBACK_CAPTION
