"""A stand-in for the engine at the edge of the conversation tests: fast, countable, holdable.

It checks inputs with the engine's own image and instruction checks, "edits" by tinting
the image, and counts what the real engine would have had to compute: a BLIP caption
when the request brings none, an inversion when the request brings no usable one.
A job can be held before its first step (and is then cancellable) so tests decide the
order of events instead of timing them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from PIL import Image

from editor.config import LimitsConfig
from editor.images import check_instruction, load_image
from editor.types import (
    EditCancelled,
    EditCounts,
    EditRequest,
    EditResult,
    EditSettings,
    Inversion,
    StepCallback,
)
from editor.worker import EditWorker, WorkerConfig
from sessions.service import EditService
from sessions.store import Store

LIMITS = LimitsConfig(max_input_bytes=200_000, max_instruction_chars=80)
RESOLUTION = 32
DEFAULTS = EditSettings(steps=4, num_captions=2)


@dataclass(frozen=True)
class Checked:
    image: Image.Image
    instruction: str


class TintEditor:
    """Edits by blending the image toward a colour named by the instruction's length."""

    def __init__(self, step_s: float = 0.0, steps: int = 3) -> None:
        self.step_s = step_s
        self.steps = steps
        self.inversions = 0
        self.captions = 0
        self.language_model_calls = 0
        self.started: list[str] = []
        self.failures: dict[str, Exception] = {}
        self._gates: dict[str, threading.Event] = {}

    def hold(self, *instructions: str) -> None:
        for instruction in instructions:
            self._gates[instruction] = threading.Event()

    def release(self, instruction: str) -> None:
        self._gates[instruction].set()

    def inversion_key(self, settings: EditSettings) -> str:
        return f"tint-steps-{settings.steps}"

    def check_inputs(self, request: EditRequest) -> Checked:
        instruction = check_instruction(request.instruction, LIMITS)
        request.settings.validate()
        return Checked(load_image(request.image, LIMITS, RESOLUTION), instruction)

    def edit(
        self,
        request: EditRequest,
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> EditResult:
        cancel = cancel or threading.Event()
        report = callback or (lambda stage, step, total: None)
        checked = self.check_inputs(request)
        self.started.append(checked.instruction)
        gate = self._gates.get(checked.instruction)
        while gate is not None and not gate.wait(0.01):
            if cancel.is_set():
                raise EditCancelled("The edit was cancelled.")
        if checked.instruction in self.failures:
            raise self.failures[checked.instruction]
        key = self.inversion_key(request.settings)
        usable = request.inversion if request.inversion is not None and request.inversion.key == key else None
        if request.caption is not None:
            caption = request.caption
        elif usable is not None:
            caption = usable.caption
        else:
            self.captions += 1
            caption = f"a picture {self.captions}"
        if usable is None or usable.caption != caption:
            self.inversions += 1
            usable = Inversion(
                latents=torch.full((1, 4, 4, 4), float(self.inversions)), caption=caption, key=key
            )
        for step in range(1, self.steps + 1):
            if cancel.is_set():
                raise EditCancelled("The edit was cancelled.")
            time.sleep(self.step_s)
            report("edit", step, self.steps)
        if request.captions is not None:
            before, after = request.captions
        else:
            self.language_model_calls += 1
            before, after = (caption,), (f"{caption}, {checked.instruction} (seed {request.seed})",)
        colour = (len(checked.instruction) * 37 % 256, 80, 160)
        strength = min(1.0, 0.3 * request.settings.direction_strength)
        image = Image.blend(checked.image, Image.new("RGB", checked.image.size, colour), strength)
        return EditResult(
            image=image,
            caption=caption,
            before_captions=tuple(before),
            after_captions=tuple(after),
            inversion=usable,
            timings={"edit": self.step_s * self.steps},
            counts=EditCounts(),
        )


def tint_service(store: Store, editor: TintEditor, per_user_cap: int = 3) -> EditService:
    """The real service and worker around the fake engine."""
    worker = EditWorker(editor, WorkerConfig(max_queue=10, per_user_cap=per_user_cap, job_timeout_s=30.0))
    return EditService(
        store,
        worker,
        DEFAULTS,
        editor.inversion_key,
        check_inputs=editor.check_inputs,
        templates=("few_shot",),
    )
