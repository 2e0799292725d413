"""The engine at full size on one GPU: ours (eager, compiled, offload) against diffusers' reference.

    python bench/gpu_bench.py          # random-weight SD 1.5 + BLIP base + Phi-2, CUDA, fp16, 512 px
    python bench/gpu_bench.py --tiny   # tiny random-weight models on the CPU (what the test runs)

Weight values do not change speed, so random full-size models give real timings without a
download. Every run of ours is a whole fresh edit (BLIP, inversion, language model,
reconstruction + guided edit, decode). Random weights make the language model's answers
unparseable, so it gets one attempt of at most ``--lm-tokens`` tokens per caption, for 2N
captions and the list layout (then the fallback captions): its decode is timed apart, with
its token count. ``edit_many`` rows are K variations of one image (caption overrides) on one
inversion, as edits/s relative to K=1.
The reference runs last, on the eager editor's own UNet (it rewires it), with BLIP and Phi-2
moved off the device so that its peak memory is its own.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (VmHWM on the CPU). A time
budget (``--budget-s``) keeps the whole run bounded: a run that would start too late is
listed as skipped; the compiled runs, whose first edit compiles, go last and need
``--compile-reserve-s`` left. One table is printed at the end.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edit_bench import PeakMemory, measure_many, measure_reference, reference_pipeline

from editor.config import edit_defaults, engine_config, load_yaml
from editor.engine import Editor
from editor.language_model import CausalLanguageModel
from editor.types import EditRequest, EditResult


@dataclass
class Row:
    run: str
    steps: int
    k: int = 1
    caption: float | None = None
    lm: float | None = None
    lm_tokens: int | None = None
    invert: float | None = None
    edit: float | None = None
    decode: float | None = None
    total: float | None = None
    forwards: int | None = None
    batch_samples: int | None = None
    backwards: int | None = None
    peak_gib: float | None = None
    vs_reference: str = ""
    vs_one: str = ""
    note: str = ""

    @property
    def diffusion(self) -> float:
        return sum(value or 0.0 for value in (self.invert, self.edit, self.decode))


class Budget:
    """Wall-clock time left for the whole run."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def load_editor(config_path: Path, args: argparse.Namespace, **engine: Any) -> Editor:
    data = load_yaml(config_path)
    section = dict(data.get("engine") or {})
    section["language_model"] = {
        **section.get("language_model", {}),
        "caption_tokens": args.lm_tokens,
        "max_attempts": 1,
    }
    compile_backend = engine.pop("compile_backend", None)
    data["engine"] = {**section, **engine}
    editor = Editor.load(engine_config(data), edit_defaults(data))
    if compile_backend is not None:
        editor.compile(compile_backend)
    return editor


def request_for(editor: Editor, steps: int, seed: int) -> EditRequest:
    image = Image.new("RGB", (640, 480), "orange")
    image.paste(Image.new("RGB", (320, 240), "navy"), (40, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    settings = editor.defaults.replace(steps=steps)
    return EditRequest(image=buffer.getvalue(), instruction="add a hat", settings=settings, seed=seed)


def measure_edit(
    editor: Editor, request: EditRequest, memory: PeakMemory, run: str
) -> tuple[Row, EditResult]:
    memory.reset()
    started = time.perf_counter()
    result = editor.edit(request)
    total = time.perf_counter() - started
    timings, counts = result.timings, result.counts
    row = Row(
        run=run,
        steps=request.settings.steps,
        caption=timings.get("caption"),
        lm=timings.get("captions"),
        lm_tokens=counts.lm_tokens,
        invert=timings.get("prepare", 0.0) + timings.get("invert", 0.0),
        edit=timings.get("edit"),
        decode=timings.get("decode"),
        total=total,
        forwards=counts.total_unet_forwards,
        batch_samples=sum(counts.unet_batch_samples.values()),
        backwards=counts.unet_backwards,
        peak_gib=memory.read_mib() / 1024,
    )
    return row, result


def run_ours(
    name: str, editor: Editor, args: argparse.Namespace, memory: PeakMemory, budget: Budget
) -> tuple[list[Row], dict[int, EditResult]]:
    """A warm-up edit (it compiles, when compiling), then one measured edit per step count."""
    started = time.perf_counter()
    editor.edit(request_for(editor, 2, args.seed))
    print(f"{name}: warm-up {time.perf_counter() - started:.1f}s", flush=True)
    rows, results = [], {}
    for steps in args.steps:
        if budget.left() <= 0:
            rows.append(Row(run=name, steps=steps, note="skipped: time budget"))
            continue
        row, results[steps] = measure_edit(editor, request_for(editor, steps, args.seed), memory, name)
        rows.append(row)
        print(f"{name} N={steps}: {row.total:.2f}s", flush=True)
    return rows, results


def run_many(editor: Editor, args: argparse.Namespace, memory: PeakMemory) -> list[Row]:
    request = request_for(editor, args.many_steps, args.seed)
    measured = measure_many(editor, request, args.ks, memory)
    base = measured[0][0] / measured[0][1]
    return [
        Row(
            run="ours edit_many",
            steps=args.many_steps,
            k=count,
            total=wall,
            peak_gib=peak / 1024,
            vs_one=f"{count / wall / base:.2f}x",
        )
        for count, wall, peak in measured
    ]


def run_reference(
    editor: Editor, results: dict[int, EditResult], args: argparse.Namespace, memory: PeakMemory
) -> list[Row]:
    language_model = editor.caption_writer.generate_text
    assert isinstance(language_model, CausalLanguageModel)
    for module in (editor.captioner.model, language_model.model):
        module.to("cpu")
    gc.collect()
    if editor.diffusion.device.type == "cuda":
        torch.cuda.empty_cache()
    pipeline = reference_pipeline(
        editor.diffusion, editor.config.model_path("diffusion"), unet=editor.diffusion.unet
    )
    rows = []
    for steps, result in results.items():
        prepared = editor.check_inputs(request_for(editor, steps, args.seed)).image
        settings = editor.defaults.replace(steps=steps)
        measured = measure_reference(
            editor, pipeline, result, prepared, seed=args.seed, memory=memory, settings=settings
        )
        rows.append(
            Row(
                run="diffusers reference",
                steps=steps,
                invert=measured.wall.get("invert"),
                edit=measured.wall.get("edit"),
                decode=measured.wall.get("decode"),
                total=measured.total_wall,
                forwards=sum(measured.forwards.values()),
                batch_samples=sum(measured.batch_samples.values()),
                backwards=measured.backwards,
                peak_gib=measured.peak_mib / 1024,
                note="diffusion stages only",
            )
        )
    return rows


def release(editor: Editor) -> None:
    del editor
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def print_table(rows: list[Row], header: str) -> None:
    reference = {row.steps: row.diffusion for row in rows if row.run == "diffusers reference" and row.total}
    for row in rows:
        if row.run.startswith("ours") and row.k == 1 and row.invert is not None and reference.get(row.steps):
            row.vs_reference = f"{row.diffusion / reference[row.steps]:.2f}x"

    def cell(value: float | int | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    columns = (
        f"{'run':<21}{'N':>4}{'K':>3}{'BLIP s':>8}{'LM s':>7}{'tok':>5}{'invert':>8}{'edit s':>8}"
        f"{'decode':>7}{'total s':>8}{'fwd':>5}{'bs':>5}{'bwd':>4}{'peak GiB':>9}{'vs ref':>7}{'vs K=1':>7}"
        "  note"
    )
    print(f"\n{header}\n{columns}\n{'-' * len(columns)}")
    for row in rows:
        print(
            f"{row.run:<21}{row.steps:>4}{row.k:>3}{cell(row.caption, '.2f'):>8}{cell(row.lm, '.2f'):>7}"
            f"{cell(row.lm_tokens, 'd'):>5}{cell(row.invert, '.2f'):>8}{cell(row.edit, '.2f'):>8}"
            f"{cell(row.decode, '.2f'):>7}{cell(row.total, '.2f'):>8}{cell(row.forwards, 'd'):>5}"
            f"{cell(row.batch_samples, 'd'):>5}{cell(row.backwards, 'd'):>4}{cell(row.peak_gib, '.2f'):>9}"
            f"{row.vs_reference:>7}{row.vs_one:>7}  {row.note}"
        )
    print(
        "invert includes the VAE encode; vs ref = ours / reference over invert + edit + decode; "
        "vs K=1 = edits/s relative to K=1; LM = one attempt of random Phi-2, timed apart."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight models on the CPU")
    parser.add_argument("--steps", default=None, help="comma-separated step counts (default 50,20; tiny 4,2)")
    parser.add_argument("--many-steps", type=int, help="steps of the edit_many rows (default 20; tiny 2)")
    parser.add_argument("--ks", default=None, help="edit_many batch sizes (default 1,2,4,8; tiny 1,2)")
    parser.add_argument(
        "--lm-tokens", type=int, default=32, help="language-model tokens per caption (engine caption_tokens)"
    )
    parser.add_argument(
        "--runs", default="eager,reference,offload,compiled", help="which runs, in this order"
    )
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend of the compiled run"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting runs after this long")
    parser.add_argument("--compile-reserve-s", type=float, default=240.0, help="time the compiled run needs")
    parser.add_argument("--models", type=Path, help="reuse a folder written by an earlier run")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    args.steps = [int(s) for s in (args.steps or ("4,2" if args.tiny else "50,20")).split(",")]
    args.many_steps = args.many_steps or (2 if args.tiny else 20)
    args.ks = [int(k) for k in (args.ks or ("1,2" if args.tiny else "1,2,4,8")).split(",")]
    args.runs = args.runs.split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.tiny:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("the full-size run wants CUDA; use --tiny on the CPU")
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models or Path(scratch)
        config_path = folder / "config.yaml"
        if not config_path.exists():
            started = time.perf_counter()
            if args.tiny:
                from editor.tiny import write_tiny_models

                write_tiny_models(folder)
            else:
                from full_size_models import write_full_size_models

                write_full_size_models(folder, device="cuda")
            print(f"wrote random-weight models in {time.perf_counter() - started:.1f}s", flush=True)
        memory = PeakMemory(torch.device("cpu" if args.tiny else "cuda"))
        if "eager" in args.runs:
            editor = load_editor(config_path, args)
            eager_rows, results = run_ours("ours eager", editor, args, memory, budget)
            rows += eager_rows
            rows += run_many(editor, args, memory) if budget.left() > 0 else []
            if "reference" in args.runs and budget.left() > 0:
                rows += run_reference(editor, results, args, memory)
            release(editor)
        if "offload" in args.runs and budget.left() > 0:
            editor = load_editor(config_path, args, offload="model")
            rows += run_ours("ours offload", editor, args, memory, budget)[0]
            release(editor)
        if "compiled" in args.runs:
            if budget.left() > args.compile_reserve_s:
                editor = load_editor(config_path, args, compile_backend=args.compile_backend)
                rows += run_ours(f"ours compiled ({args.compile_backend})", editor, args, memory, budget)[0]
                release(editor)
            else:
                rows += [
                    Row(run="ours compiled", steps=steps, note="skipped: time budget") for steps in args.steps
                ]
    device = (
        "CPU, tiny models, fp32" if args.tiny else f"{torch.cuda.get_device_name()}, full size, fp16, 512 px"
    )
    print_table(rows, f"gpu_bench: {device}; torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
