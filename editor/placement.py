"""Where the models live and how their time is counted: device, dtype, offload, compilation.

Kept apart from the edit's steps (``editor.engine``) because it is about the machine, not the
method: which device and precision ``auto`` means, which models ``engine.offload: model`` keeps
in host memory between their stages, and what ``engine.compile`` switches on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from editor.language_model import CausalLanguageModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from editor.captioner import Captioner
    from editor.captions import CaptionWriter
    from editor.diffusion import DiffusionModels


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA (the paper's setting) and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def language_model_of(caption_writer: CaptionWriter) -> PreTrainedModel | None:
    """The language model's torch module, when the caption writer runs one."""
    generate_text = caption_writer.generate_text
    return generate_text.model if isinstance(generate_text, CausalLanguageModel) else None


def offloaded_modules(captioner: Captioner, caption_writer: CaptionWriter) -> list[torch.nn.Module]:
    """What ``engine.offload: model`` keeps off the GPU between its stages."""
    lm = language_model_of(caption_writer)
    return [captioner.model] if lm is None else [captioner.model, lm]


@contextmanager
def resident(module: torch.nn.Module | None, device: torch.device, offload: str) -> Iterator[None]:
    """``engine.offload: model``: the module is on the GPU for this stage only."""
    if module is None or offload != "model":
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")


@contextmanager
def timed(timings: dict[str, float], stage: str, device: torch.device) -> Iterator[None]:
    """Add the stage's wall time to ``timings``; on CUDA, once its kernels have finished."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def compile_for_speed(diffusion: DiffusionModels, lm: PreTrainedModel | None, backend: str) -> None:
    """The UNet compiled and channels-last; on CUDA, TF32 matmuls and convolutions for the float32
    VAE; a static KV cache for the language model (on CUDA transformers then compiles its step)."""
    diffusion.compile(backend)
    if diffusion.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if lm is not None:
        lm.generation_config.cache_implementation = "static"
