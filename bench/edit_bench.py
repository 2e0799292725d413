"""One edit, ours against diffusers' reference pix2pix-zero pipeline, in the same process.

    python bench/edit_bench.py                 # tiny random-weight models on the CPU
    python bench/edit_bench.py --full          # full-size random-weight SD 1.5 / BLIP / Phi-2, CUDA

Weight values do not change speed, so random full-size models give real timings without a
download. Printed: per-stage wall time, UNet forwards and batch-samples, UNet backwards, LM
tokens and ``generate`` calls, peak memory; then ratios ours / reference, and the ratio of
an edit from a cached inversion to a fresh one (which must make no inversion UNet call).
Then the cuts: batch-samples per stage in units of N (fresh target 6N, the reference 7N),
the bytes of attention maps held at once (one step of one half, against all N steps of both
halves for a two-pass edit), and ``edit_many`` throughput for K = 1, 2, 4 relative to K = 1.

The reference (``StableDiffusionPix2PixZeroPipeline``) has no language model and no BLIP
step of its own in this comparison: it is given our caption and our before/after captions,
so its column covers the diffusion stages only; ours adds the caption and LM stages on top.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editor.diffusion import DiffusionModels, UNetCounter
from editor.direction import edit_direction
from editor.engine import Editor
from editor.types import EditRequest, EditResult, EditSettings
from sessions.config import load_config


@dataclass
class Measured:
    wall: dict[str, float] = field(default_factory=dict)
    forwards: dict[str, int] = field(default_factory=dict)
    batch_samples: dict[str, int] = field(default_factory=dict)
    backwards: int = 0
    lm_tokens: int = 0
    lm_calls: int = 0
    peak_mib: float = 0.0

    @property
    def total_wall(self) -> float:
        return sum(self.wall.values())


class PeakMemory:
    """Peak GPU memory on CUDA; peak resident memory of this process on the CPU (Linux)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            # Writing 5 to clear_refs resets VmHWM, the peak resident set size.
            Path("/proc/self/clear_refs").write_text("5")

    def read_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def measure_ours(editor: Editor, request: EditRequest, memory: PeakMemory) -> tuple[Measured, EditResult]:
    memory.reset()
    result = editor.edit(request)
    measured = Measured(
        wall=dict(result.timings),
        forwards=dict(result.counts.unet_forwards),
        batch_samples=dict(result.counts.unet_batch_samples),
        backwards=result.counts.unet_backwards,
        lm_tokens=result.counts.lm_tokens,
        lm_calls=result.counts.lm_generate_calls,
        peak_mib=memory.read_mib(),
    )
    return measured, result


def reference_pipeline(
    models: DiffusionModels, diffusion_path: str, unet: torch.nn.Module | None = None
) -> Any:
    """The deprecated reference, by default on its own UNet copy: it rewires the UNet it is given
    (pass the editor's own only when the editor will not edit again).

    It shares ``models``' VAE, text encoder, tokenizer and scheduler settings, so that only
    the method differs (``tests/test_diffusion.py`` compares against it too).
    """
    from diffusers import (
        DDIMInverseScheduler,
        DDIMScheduler,
        StableDiffusionPix2PixZeroPipeline,
        UNet2DConditionModel,
    )

    if unet is None:
        unet = UNet2DConditionModel.from_pretrained(diffusion_path, subfolder="unet", dtype=models.dtype)
    # Any: mypy resolves diffusers' lazy exports to its dummy classes, which have no methods.
    pipeline: Any = StableDiffusionPix2PixZeroPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=unet.to(models.device),
        scheduler=DDIMScheduler.from_config(models.scheduler_config),
        inverse_scheduler=DDIMInverseScheduler.from_config(models.scheduler_config),
        feature_extractor=None,
        safety_checker=None,
        caption_generator=None,
        caption_processor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class ReferenceCounter:
    """Counts the reference's UNet forwards (by a hook) and backwards (through ``Tensor.backward``)."""

    def __init__(self, unet: torch.nn.Module, steps: int) -> None:
        self.steps = steps
        self.stage = "invert"
        self.seen_in_call = 0
        self.forwards: dict[str, int] = defaultdict(int)
        self.batch_samples: dict[str, int] = defaultdict(int)
        self.backwards = 0
        unet.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        stage = self.stage
        if stage == "call":
            # __call__ runs the reconstruction loop (N forwards) before the guided loop.
            stage = "reconstruct" if self.seen_in_call < self.steps else "edit"
            self.seen_in_call += 1
        self.forwards[stage] += 1
        self.batch_samples[stage] += sample.shape[0]

    @contextmanager
    def counting_backwards(self) -> Iterator[None]:
        original = torch.Tensor.backward

        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            self.backwards += 1
            original(tensor, *args, **kwargs)

        with patch.object(torch.Tensor, "backward", counted):
            yield


def measure_reference(
    editor: Editor,
    pipeline: Any,
    result: EditResult,
    image: Image.Image,
    *,
    seed: int,
    memory: PeakMemory,
    settings: EditSettings | None = None,
) -> Measured:
    settings = settings or editor.defaults
    models = editor.diffusion
    counter = ReferenceCounter(pipeline.unet, settings.steps)
    caption = models.encode_prompt([result.caption]).to(models.dtype)
    before = models.encode_prompt(list(result.before_captions)).to(models.dtype)
    after = models.encode_prompt(list(result.after_captions)).to(models.dtype)
    latents = models.encode_image(image).to(models.dtype)
    wall: dict[str, float] = {}
    memory.reset()
    with timed(wall, "invert", models.device):
        inverted = pipeline.invert(
            image=latents,
            prompt_embeds=caption,
            num_inference_steps=settings.steps,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="latent",
        ).latents
    counter.stage = "call"
    with timed(wall, "edit", models.device), counter.counting_backwards():
        edited = pipeline(
            prompt_embeds=caption,
            negative_prompt_embeds=caption,
            source_embeds=before,
            target_embeds=after,
            latents=inverted,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            cross_attention_guidance_amount=settings.cross_attention_guidance,
            output_type="latent",
        ).images
    with timed(wall, "decode", models.device):
        models.decode(edited)
    return Measured(
        wall=wall,
        forwards=dict(counter.forwards),
        batch_samples=dict(counter.batch_samples),
        backwards=counter.backwards,
        peak_mib=memory.read_mib(),
    )


@contextmanager
def timed(wall: dict[str, float], stage: str, device: torch.device) -> Iterator[None]:
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall[stage] = wall.get(stage, 0.0) + time.perf_counter() - start


def ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.2f}x" if reference else "-"


def print_report(ours: Measured, cached: Measured, reference: Measured, steps: int) -> None:
    stages = ["prepare", "caption", "invert", "captions", "direction", "reconstruct", "edit", "decode"]
    print(f"\nper stage ({steps} steps); wall in seconds; fwd = UNet forwards, bs = batch-samples")
    header = f"{'stage':<12}{'ours s':>9}{'fwd':>6}{'bs':>6}{'ref s':>9}{'fwd':>6}{'bs':>6}{'cached s':>10}"
    print(header)
    print("-" * len(header))
    for stage in stages:
        # The reference's reconstruction runs inside its __call__, timed as "edit" there and here.
        print(
            f"{stage:<12}"
            f"{_cell(ours.wall.get(stage)):>9}{ours.forwards.get(stage, 0):>6}"
            f"{ours.batch_samples.get(stage, 0):>6}"
            f"{_cell(reference.wall.get(stage)):>9}{reference.forwards.get(stage, 0):>6}"
            f"{reference.batch_samples.get(stage, 0):>6}{_cell(cached.wall.get(stage)):>10}"
        )
    diffusion_stages = ("invert", "edit", "decode")
    ours_diffusion = sum(ours.wall.get(s, 0.0) for s in diffusion_stages)
    reference_diffusion = sum(reference.wall.get(s, 0.0) for s in diffusion_stages)
    print()
    print(f"{'':<34}{'ours':>12}{'reference':>12}{'ratio':>9}")
    rows = [
        ("diffusion stages wall (s)", ours_diffusion, reference_diffusion),
        ("UNet forwards", sum(ours.forwards.values()), sum(reference.forwards.values())),
        ("UNet batch-samples", sum(ours.batch_samples.values()), sum(reference.batch_samples.values())),
        ("UNet backwards", ours.backwards, reference.backwards),
        ("peak memory (MiB)", ours.peak_mib, reference.peak_mib),
    ]
    for name, mine, theirs in rows:
        print(f"{name:<34}{mine:>12.4g}{theirs:>12.4g}{ratio(mine, theirs):>9}")
    print(f"{'whole edit wall incl. BLIP + LM (s)':<34}{ours.total_wall:>12.4g}{'n/a':>12}")
    print(f"{'LM generate calls / tokens':<34}{f'{ours.lm_calls} / {ours.lm_tokens}':>12}{'n/a':>12}")
    print(
        f"\ncached inversion: inversion UNet forwards {cached.forwards.get('invert', 0)} "
        f"(fresh {ours.forwards.get('invert', 0)}); wall cached / fresh = "
        f"{ratio(cached.total_wall, ours.total_wall)}"
    )


def measure_maps(editor: Editor, result: EditResult, settings: EditSettings) -> tuple[int, int]:
    """Peak bytes of attention maps held: a two-pass edit as the reference runs it (all steps,
    both halves), against ours (interleaved, one step of one half)."""
    models = editor.diffusion
    caption = models.encode_prompt([result.caption])
    direction = edit_direction(
        models.encode_prompt(list(result.before_captions)), models.encode_prompt(list(result.after_captions))
    )
    two_pass, interleaved = UNetCounter(), UNetCounter()
    latents = result.inversion.latents
    models.reconstruct(
        latents,
        caption,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        fold_equal_halves=False,
        counter=two_pass,
    )
    models.edit(latents, caption, direction, settings=settings, counter=interleaved)
    return two_pass.peak_map_bytes, interleaved.peak_map_bytes


def variations(request: EditRequest, count: int) -> list[EditRequest]:
    """``count`` edits of one image differing in direction: their own after-captions and strengths
    (caption overrides: the language model runs once per edit either way, batched or not)."""
    strengths = [1.0 + 0.25 * k for k in range(count)]
    return [
        replace(
            request,
            seed=request.seed + k,
            captions=(("a photo",), (f"a photo, variation {k}",)),
            settings=request.settings.replace(direction_strength=strengths[k]),
        )
        for k in range(count)
    ]


def measure_many(
    editor: Editor, request: EditRequest, ks: list[int], memory: PeakMemory
) -> list[tuple[int, float, float]]:
    """``(K, wall seconds, peak MiB)`` of one ``edit_many`` call per K, fresh (BLIP and inversion
    included, once per call)."""
    rows = []
    for count in ks:
        memory.reset()
        started = time.perf_counter()
        editor.edit_many(variations(request, count))
        rows.append((count, time.perf_counter() - started, memory.read_mib()))
    return rows


def print_cuts(
    ours: Measured,
    cached: Measured,
    reference: Measured,
    steps: int,
    *,
    maps: tuple[int, int],
    many: list[tuple[int, float, float]],
) -> None:
    print("\nbatch-samples per stage, in units of N (fresh target 6N; the reference 7N)")
    for name, measured in (("ours fresh", ours), ("ours cached", cached), ("reference", reference)):
        stages = ", ".join(f"{stage} {bs / steps:g}N" for stage, bs in measured.batch_samples.items())
        print(f"  {name:<12} {sum(measured.batch_samples.values()) / steps:g}N  ({stages})")
    two_pass, interleaved = maps
    print(
        f"\nattention maps held at once: two-pass (N steps, both halves) {two_pass / 2**20:.2f} MiB, "
        f"ours (one step, one half) {interleaved / 2**20:.3f} MiB = {interleaved / two_pass:.4f}x"
    )
    base = many[0][1] / many[0][0]
    print("\nedit_many, fresh, caption overrides: K, wall s, edits/s, relative to K=1, peak MiB")
    for count, wall, peak in many:
        print(f"  K={count:<3}{wall:>8.2f}{count / wall:>9.2f}{base * count / wall:>8.2f}x{peak:>10.0f}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full-size random-weight models (wants CUDA)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 10 tiny, 50 full)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--models", type=Path, help="reuse a folder written by an earlier run")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models: 1 is steadiest)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models or Path(scratch)
        config_path = folder / "config.yaml"
        if not config_path.exists():
            writer = _full_size_writer() if args.full else _tiny_writer()
            started = time.perf_counter()
            writer(folder)
            print(f"wrote random-weight models in {time.perf_counter() - started:.1f}s")
        config = load_config(config_path)
        defaults = replace(config.edit, steps=args.steps or (50 if args.full else 10))
        editor = Editor.load(config.engine, defaults)
        memory = PeakMemory(editor.diffusion.device)
        print(f"device {editor.diffusion.device}, dtype {editor.diffusion.dtype}, steps {defaults.steps}")

        image = Image.new("RGB", (640, 480), "orange")
        image.paste(Image.new("RGB", (320, 240), "navy"), (40, 60))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        request = EditRequest(
            image=buffer.getvalue(), instruction="add a hat", settings=defaults, seed=args.seed
        )

        editor.edit(replace(request, captions=(("warm up",), ("warm up, once",))))  # load kernels, caches
        ours, result = measure_ours(editor, request, memory)
        cached, _ = measure_ours(editor, replace(request, inversion=result.inversion), memory)
        prepared = editor.check_inputs(request).image
        pipeline = reference_pipeline(editor.diffusion, editor.config.model_path("diffusion"))
        reference = measure_reference(editor, pipeline, result, prepared, seed=args.seed, memory=memory)
        maps = measure_maps(editor, result, defaults)
        many = measure_many(editor, request, [1, 2, 4], memory)
        print_report(ours, cached, reference, defaults.steps)
        print_cuts(ours, cached, reference, defaults.steps, maps=maps, many=many)
    return 0


def _tiny_writer() -> Callable[[Path], Path]:
    from editor.tiny import write_tiny_models

    return write_tiny_models


def _full_size_writer() -> Callable[[Path], Path]:
    from full_size_models import write_full_size_models

    return write_full_size_models


if __name__ == "__main__":
    sys.exit(main())
