"""What may be asked of the engine without its models: limits, input checks, the inversion key.

The bot checks a request and names its cached inversion before the edit runs. With the models in
this process (:class:`editor.engine.Editor`) that is the editor's own front; with the models on
remote replicas (``editor.ray_replicas``) a replica hands its front over, so the bot's checks and
cache keys are exactly those of the replicas, down to the dtype their device picked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from editor.config import EngineConfig, LimitsConfig
from editor.images import check_instruction, load_image
from editor.overrides import Captions, check_caption_overrides
from editor.types import EditRequest, EditSettings, InvalidInput

#: Settings the shared inversion and reconstruction depend on: edits made together share them.
SHARED_SETTINGS = ("steps", "guidance_scale", "cross_attention_guidance")


@dataclass(frozen=True)
class PreparedInput:
    image: Image.Image
    instruction: str
    settings: EditSettings


@dataclass(frozen=True)
class EditorFront:
    """The engine's config, defaults and templates, and the dtype of its diffusion model."""

    config: EngineConfig
    defaults: EditSettings
    template_names: tuple[str, ...]
    #: As torch writes it (``torch.float16``): inversions made in another dtype are not reused.
    dtype: str
    #: The diffusion model's CLIP tokenizer (small, and it travels with the front from a replica),
    #: to count the tokens of captions a person wrote; None: counted roughly from the words.
    tokenizer: Any = field(default=None, compare=False, repr=False)

    @property
    def limits(self) -> LimitsConfig:
        """The input limits ``check_inputs`` enforces, so transports can refuse early."""
        return self.config.limits

    @property
    def model_ids(self) -> dict[str, str]:
        """The configured id of each model (captioner, language model, diffusion), for provenance."""
        return dataclasses.asdict(self.config.models)

    def check_captions(self, captions: Captions) -> None:
        """Refuse captions a person wrote that CLIP would cut short or that change nothing."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            check_caption_overrides(captions, lambda text: len(text.split()) * 4 // 3 + 2, 77)
            return
        check_caption_overrides(
            captions, lambda text: len(tokenizer(text).input_ids), tokenizer.model_max_length
        )

    def inversion_key(self, settings: EditSettings) -> str:
        """What an inversion depends on besides the image and its caption."""
        facts = {
            "model": self.config.models.diffusion,
            "resolution": self.config.resolution,
            "dtype": self.dtype,
            "steps": settings.steps,
            "regularisation": self.config.inversion.__dict__,
        }
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    def check_inputs(self, request: EditRequest) -> PreparedInput:
        """Raise :class:`InvalidInput` with a message for the user before any model runs."""
        if not isinstance(request.settings, EditSettings):
            raise InvalidInput("Edit settings are missing.")
        request.settings.validate(self.template_names)
        if not isinstance(request.seed, int) or not 0 <= request.seed < 2**63:
            raise InvalidInput("The seed must be a whole number between 0 and 2**63 - 1.")
        if request.caption is not None and not request.caption.strip():
            raise InvalidInput("A caption override must not be empty.")
        if request.captions is not None:
            before, after = request.captions
            if not after or not all(isinstance(c, str) and c.strip() for c in before + after):
                raise InvalidInput("Caption overrides need at least one non-empty after caption.")
        instruction = check_instruction(request.instruction, self.limits)
        image = load_image(request.image, self.limits, self.config.resolution)
        return PreparedInput(image=image, instruction=instruction, settings=request.settings)

    def check_batch(self, requests: Sequence[EditRequest]) -> list[PreparedInput]:
        """Every request's own checks, then what edits made together must share."""
        if not requests:
            raise InvalidInput("No edit was asked for.")
        prepared = [self.check_inputs(request) for request in requests]
        first, reference = requests[0], prepared[0]
        for request, item in zip(requests[1:], prepared[1:], strict=True):
            if item.image.size != reference.image.size or item.image.tobytes() != reference.image.tobytes():
                raise InvalidInput("Edits made together must be of the same image.")
            if any(
                getattr(item.settings, name) != getattr(reference.settings, name) for name in SHARED_SETTINGS
            ):
                raise InvalidInput(f"Edits made together must share {', '.join(SHARED_SETTINGS)}.")
            if request.caption != first.caption or request.inversion is not first.inversion:
                raise InvalidInput(
                    "Edits made together must share the caption override and cached inversion."
                )
        return prepared
