"""The one stand-in for the engine, used by the tests and benchmarks: fast, countable, holdable.

It checks inputs with the engine's own image and instruction checks, "edits" by tinting
the image, and counts what the real engine would have had to compute: a BLIP caption
when the request brings none, an inversion when the request brings no usable one, a
language-model call when the request brings no captions. A job can be held before its
first step (and is then cancellable) so tests decide the order of events instead of
timing them; ``failures`` makes a named job raise. Each step can sleep (``step_s``, a
job that waits) or spin (``busy_s``, a job that holds the GIL like Python-heavy work).

On Ray replicas the stand-in lives in other processes, so holds and the record of started jobs
go through a :class:`Board`, a folder the test and every replica share.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from editor.captions import caption_notes
from editor.config import LimitsConfig
from editor.images import check_instruction, load_image
from editor.overrides import check_caption_overrides
from editor.replicas import Replica
from editor.types import (
    EditCounts,
    EditRequest,
    EditResult,
    EditSettings,
    Inversion,
    PreviewCallback,
    PriorEdit,
    StepCallback,
    raise_if_cancelled,
)
from sessions.compose import App, compose
from sessions.config import AppConfig

LIMITS = LimitsConfig(max_input_bytes=200_000, max_instruction_chars=80)
RESOLUTION = 32
DEFAULTS = EditSettings(steps=4, num_captions=2)
#: How often a held job looks for its release or a cancel.
_HOLD_POLL_S = 0.002
#: The same through a board (a file's presence), read by processes that share the machine's cores.
_BOARD_POLL_S = 0.01


@dataclass(frozen=True)
class Board:
    """Holds and starts shared between a test and stand-ins in other processes (Ray replicas)."""

    folder: Path

    def hold(self, *instructions: str) -> None:
        for instruction in instructions:
            (self.folder / f"hold-{instruction}").touch()

    def release(self, instruction: str) -> None:
        (self.folder / f"hold-{instruction}").unlink()

    def held(self, instruction: str) -> bool:
        return (self.folder / f"hold-{instruction}").exists()

    def record_start(self, instruction: str) -> None:
        with (self.folder / "started").open("a", encoding="utf-8") as log:
            log.write(f"{instruction} {os.getpid()}\n")

    def started(self) -> list[tuple[str, int]]:
        """(instruction, pid of the process that runs it), in the order the edits began."""
        log = self.folder / "started"
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return [(name, int(pid)) for name, pid in (line.split() for line in lines)]


@dataclass(frozen=True)
class BoardStandIn:
    """Builds a stand-in in a replica's process (picklable), its holds and starts on ``board``."""

    board: Board
    steps: int = 3
    step_s: float = 0.0
    #: (instruction, what its edit raises), as ``StandInEditor.failures``.
    failures: tuple[tuple[str, BaseException], ...] = ()

    def __call__(self) -> StandInEditor:
        editor = StandInEditor(board=self.board, steps=self.steps, step_s=self.step_s)
        editor.failures.update(self.failures)
        return editor


@dataclass(frozen=True)
class Checked:
    image: Image.Image
    instruction: str


class StandInEditor:
    """Edits by blending the image toward a colour named by the instruction's length."""

    template_names: tuple[str, ...] = ("few_shot",)

    def __init__(
        self,
        *,
        steps: int = 3,
        step_s: float = 0.0,
        busy_s: float = 0.0,
        defaults: EditSettings = DEFAULTS,
        limits: LimitsConfig = LIMITS,
        board: Board | None = None,
    ) -> None:
        self.steps = steps
        self.step_s = step_s
        self.busy_s = busy_s
        self.defaults = defaults
        self.limits = limits
        self.model_ids = {"diffusion": "stand-in/tint"}
        self.inversions = 0
        self.captions = 0
        self.language_model_calls = 0
        #: The size of each ``edit_many`` batch, in order.
        self.batches: list[int] = []
        #: Each edit's earlier turns (chain mode compose), in the order the edits began.
        self.priors: list[tuple[PriorEdit, ...]] = []
        #: Instructions (tidied) in the order their edits began.
        self.started: list[str] = []
        #: Instruction -> what its edit raises (after any hold).
        self.failures: dict[str, BaseException] = {}
        #: Instructions whose edit reports that the language model's fallback captions were used.
        self.fallbacks: set[str] = set()
        self._gates: dict[str, threading.Event] = {}
        self.board = board

    def hold(self, *instructions: str) -> None:
        for instruction in instructions:
            self._gates[instruction] = threading.Event()

    def release(self, instruction: str) -> None:
        self._gates[instruction].set()

    def inversion_key(self, settings: EditSettings) -> str:
        return f"tint-steps-{settings.steps}"

    def check_captions(self, captions: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
        """The engine's check, with words standing in for CLIP's tokens (77 with the markers)."""
        check_caption_overrides(captions, lambda text: len(text.split()) + 2, 77)

    def check_inputs(self, request: EditRequest) -> Checked:
        instruction = check_instruction(request.instruction, self.limits)
        request.settings.validate(self.template_names)
        return Checked(load_image(request.image, self.limits, RESOLUTION), instruction)

    def edit(
        self,
        request: EditRequest,
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> EditResult:
        # The worker always passes both; a stand-in that tolerated their absence would hide a bug.
        assert callback is not None, "the worker passes a progress callback"
        assert cancel is not None, "the worker passes a cancel event"
        checked = self.check_inputs(request)
        self.started.append(checked.instruction)
        self.priors.append(request.prior)
        gate = self._gates.get(checked.instruction)
        while gate is not None and not gate.wait(_HOLD_POLL_S):
            raise_if_cancelled(cancel)
        if self.board is not None:
            self.board.record_start(checked.instruction)
            while self.board.held(checked.instruction):
                raise_if_cancelled(cancel)
                time.sleep(_BOARD_POLL_S)
        if checked.instruction in self.failures:
            raise self.failures[checked.instruction]
        caption, inversion = self._caption_and_inversion(request)
        for step in range(1, self.steps + 1):
            raise_if_cancelled(cancel)
            self._work_one_step()
            callback("edit", step, self.steps)
            if preview is not None and request.previews:
                preview(_preview_png(checked.image, step / self.steps))
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
            inversion=inversion,
            timings={"edit": (self.step_s + self.busy_s) * self.steps},
            counts=EditCounts(),
            used_fallback_captions=checked.instruction in self.fallbacks,
            notes=tuple(caption_notes(checked.instruction in self.fallbacks, 3, 0)),
        )

    def edit_many(
        self,
        requests: Sequence[EditRequest],
        *,
        callback: StepCallback | None = None,
        cancel: threading.Event | None = None,
        preview: PreviewCallback | None = None,
    ) -> list[EditResult]:
        """K edits of one image, as the engine makes them: one caption and one inversion for all."""
        self.batches.append(len(requests))
        first = self.edit(requests[0], callback=callback, cancel=cancel, preview=preview)
        rest = [
            self.edit(
                replace(r, inversion=first.inversion, caption=first.caption), callback=callback, cancel=cancel
            )
            for r in requests[1:]
        ]
        return [first, *rest]

    def _caption_and_inversion(self, request: EditRequest) -> tuple[str, Inversion]:
        """The request's caption and inversion when usable, counted stand-ins for BLIP and DDIM otherwise."""
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
        return caption, usable

    def _work_one_step(self) -> None:
        if self.step_s:
            time.sleep(self.step_s)
        deadline = time.perf_counter() + self.busy_s
        while time.perf_counter() < deadline:  # holds the GIL, as Python-heavy work does
            pass


def _preview_png(image: Image.Image, done: float) -> bytes:
    """A preview that changes as the edit goes on: the image darkened by the share left to do."""
    buffer = io.BytesIO()
    Image.blend(Image.new("RGB", image.size), image, done).save(buffer, format="PNG")
    return buffer.getvalue()


def stand_in_app(
    database: Path, editor: StandInEditor, *, per_user_cap: int = 3, replicas: Sequence[Replica] | None = None
) -> App:
    """The real store, worker and service around ``editor``, composed as ``bot.py`` composes them.

    With ``replicas`` (Ray replicas running stand-ins) the jobs run there; ``editor`` checks requests.
    """
    config = AppConfig.from_mapping(
        {
            "storage": {"database": str(database)},
            "worker": {
                "max_queue": 10,
                "per_user_cap": per_user_cap,
                "job_timeout_s": 30.0,
                "backend": "local" if replicas is None else "ray",
            },
        },
        database.parent,
    )
    return compose(config, editor=editor, replicas=replicas)
