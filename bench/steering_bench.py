"""What steering costs, on tiny random-weight models on the CPU, one run, printed as ratios.

    python bench/steering_bench.py [--steps N] [--models FOLDER]

1. Variations: the 4 alternatives of one edit (``sessions.variations``: other language-model
   samples and strengths) as one ``Editor.edit_many`` batch, against the same 4 made as 4
   separate edits. Both start from the parent's cached inversion, as in the bot. Printed: wall
   time and UNet batch-samples of the batch / of the 4 edits (below 1: the batch is cheaper).
2. Chains: 4 turns in chain mode ``compose`` (each turn the summed directions on the first
   inversion) against ``reinvert`` (each turn inverts the previous result), with fixed captions
   so that the language model's sampling does not blur the comparison. Printed: compose /
   reinvert for wall time and UNet batch-samples. (Quality needs real weights: run
   ``python -m evaluation --strategy default --strategy compose --protocol multi``.)
3. Previews: one edit (cached inversion, fixed captions) with previews on against off, best of
   3 each, at the configured interval and at one preview per step (the worst case). Printed:
   on / off wall time (the bound is 1.05).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editor.engine import Editor
from editor.tiny import write_tiny_models
from editor.types import EditRequest, EditResult, PriorEdit
from sessions.config import load_config
from sessions.variations import variation_requests


def batch_samples(result: EditResult) -> int:
    return sum(result.counts.unet_batch_samples.values())


def bench_variations(editor: Editor, base: EditRequest) -> tuple[float, float]:
    """(wall, batch-samples) of 4 variations as one batch / as 4 separate edits."""
    requests = variation_requests(base)
    started = time.perf_counter()
    separate = [editor.edit(request) for request in requests]
    separate_wall = time.perf_counter() - started
    started = time.perf_counter()
    batched = editor.edit_many(requests)
    batched_wall = time.perf_counter() - started
    separate_samples = sum(batch_samples(result) for result in separate)
    print(
        f"variations x4: separate {separate_wall:.2f} s, {separate_samples} UNet batch-samples; "
        f"one batch {batched_wall:.2f} s, {batch_samples(batched[0])} batch-samples"
    )
    return batched_wall / separate_wall, batch_samples(batched[0]) / separate_samples


TURNS = (
    ("add a hat", "a photo with a hat"),
    ("at night", "a photo at night"),
    ("in snow", "a photo in snow"),
    ("in watercolor", "a watercolor photo"),
)


def bench_chain(editor: Editor, base: EditRequest) -> tuple[float, float]:
    """(wall, batch-samples) of a 4-turn chain, compose / reinvert; each starts from a fresh inversion."""
    totals = {}
    for mode in ("reinvert", "compose"):
        image, inversion = base.image, None
        prior: tuple[PriorEdit, ...] = ()
        started, samples = time.perf_counter(), 0
        for instruction, after in TURNS:
            captions = (("a photo",), (after,))
            request = replace(
                base,
                image=image,
                instruction=instruction,
                captions=captions,
                inversion=inversion,
                prior=prior,
            )
            result = editor.edit(request)
            samples += batch_samples(result)
            if mode == "reinvert":
                buffer = io.BytesIO()
                result.image.save(buffer, format="PNG")
                image = buffer.getvalue()
            else:
                inversion = result.inversion
                prior = (*prior, PriorEdit(*captions, base.settings.direction_strength))
        totals[mode] = (time.perf_counter() - started, samples)
        print(f"chain of {len(TURNS)}, {mode}: {totals[mode][0]:.2f} s, {samples} UNet batch-samples")
    return totals["compose"][0] / totals["reinvert"][0], totals["compose"][1] / totals["reinvert"][1]


def bench_previews(editor: Editor, base: EditRequest, interval_s: float) -> float:
    """Wall time of an edit with previews / without, best of 3 each, at ``interval_s``."""
    editor.config = replace(editor.config, preview_interval_s=interval_s)
    request = replace(base, captions=(("a photo",), ("a photo with a hat",)))
    best = {True: float("inf"), False: float("inf")}
    shown: list[bytes] = []
    for _ in range(3):
        for previews in (False, True):
            started = time.perf_counter()
            editor.edit(replace(request, previews=previews), preview=shown.append)
            best[previews] = min(best[previews], time.perf_counter() - started)
    print(
        f"previews every {interval_s:g} s: {len(shown) // 3} per edit, best {best[True]:.3f} s on, "
        f"{best[False]:.3f} s off"
    )
    return best[True] / best[False]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--models", type=Path, help="reuse a folder of tiny models written by an earlier run")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # tiny models: one thread is steadiest on shared cores
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models or Path(scratch)
        if not (folder / "config.yaml").exists():
            write_tiny_models(folder)
        config = load_config(folder / "config.yaml")
        defaults = replace(config.edit, steps=args.steps)
        editor = Editor.load(config.engine, defaults)
        image = Image.new("RGB", (640, 480), "orange")
        image.paste(Image.new("RGB", (320, 240), "navy"), (40, 60))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        request = EditRequest(image=buffer.getvalue(), instruction="add a hat", settings=defaults, seed=7)
        first = editor.edit(request)  # the parent's edit: its inversion is cached from here on
        base = replace(request, inversion=first.inversion, caption=first.caption, seed=11)
        wall, samples = bench_variations(editor, base)
        print(f"variations, one batch / 4 edits: wall {wall:.2f}x, UNet batch-samples {samples:.2f}x")
        wall, samples = bench_chain(editor, replace(request, seed=13))
        print(f"chain of 4, compose / reinvert: wall {wall:.2f}x, UNet batch-samples {samples:.2f}x")
        for interval_s in (config.engine.preview_interval_s, 0.0):
            ratio = bench_previews(editor, base, interval_s)
            print(f"previews every {interval_s:g} s, on / off: wall {ratio:.3f}x (bound 1.05x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
