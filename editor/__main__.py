"""Command line: ``python -m editor edit IN "add a hat" -o OUT`` and ``python -m editor tiny-models DIR``.

Installed, ``onthefly-edit`` is the same command. Progress bars and log lines share the terminal
without garbling each other (``editor.logs``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from editor.config import ConfigError, edit_defaults, engine_config, find_config, load_yaml
from editor.logs import setup_logging
from editor.types import STAGES, EditCancelled, EditRequest, InvalidInput

if TYPE_CHECKING:
    from tqdm import tqdm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="onthefly-edit", description="Edit an image with an instruction (Pix2Pix-OnTheFly)."
    )
    common = argparse.ArgumentParser(add_help=False)
    loudness = common.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    loudness.add_argument("--verbose", action="store_true", help="log debugging details too")
    commands = parser.add_subparsers(dest="command", required=True)

    edit = commands.add_parser("edit", help="edit one image with an instruction", parents=[common])
    edit.add_argument("input", type=Path, help="the image to edit")
    edit.add_argument("instruction", help='what to change, e.g. "add a hat"')
    edit.add_argument("-o", "--output", type=Path, required=True, help="where to write the edited image")
    edit.add_argument(
        "--config", type=Path, help="config file (default: ./config.yaml if there is one, else the defaults)"
    )
    edit.add_argument("--steps", type=int, help="DDIM steps (overrides the config)")
    edit.add_argument("--seed", type=int, default=42)
    edit.add_argument("--save-inversion", type=Path, help="also write the inversion, to reuse it later")
    edit.add_argument("--inversion", type=Path, help="reuse an inversion written by --save-inversion")

    tiny = commands.add_parser(
        "tiny-models",
        help="write the engine's tiny random-weight models and a config for them "
        "(python -m evaluation tiny-models adds CLIP and DINO)",
        parents=[common],
    )
    tiny.add_argument("folder", type=Path)

    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else 1 if args.verbose else 0)
    if args.command == "tiny-models":
        from editor.tiny import write_tiny_models

        config_path = write_tiny_models(args.folder)
        print(f"tiny models and {config_path} written")
        return 0
    return _edit(args)


def _edit(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from editor.engine import Editor
    from editor.types import Inversion

    try:
        data = load_yaml(find_config(args.config))
        defaults = edit_defaults(data)
        if args.steps is not None:
            defaults = replace(defaults, steps=args.steps)
        image = args.input.read_bytes()
        inversion = Inversion.from_bytes(args.inversion.read_bytes()) if args.inversion else None
        editor = Editor.load(engine_config(data), defaults)
        request = EditRequest(image=image, instruction=args.instruction, settings=defaults, seed=args.seed)
        request = replace(request, inversion=inversion)
        with logging_redirect_tqdm(), _StageBars() as bars:
            result = editor.edit(request, callback=bars.update)
    except (ConfigError, InvalidInput, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except (EditCancelled, KeyboardInterrupt):
        print("cancelled", file=sys.stderr)
        return 130

    args.output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.output)
    if args.save_inversion:
        args.save_inversion.write_bytes(result.inversion.to_bytes())
    print(f"caption: {result.caption}")
    print("before:  " + " | ".join(result.before_captions))
    print("after:   " + " | ".join(result.after_captions))
    if result.used_fallback_captions:
        print("note: the language model gave no usable captions; the fallback captions were used")
    print("timings: " + ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in result.timings.items()))
    print(f"wrote {args.output}")
    return 0


class _StageBars:
    """One tqdm bar per stage, opened as the engine reaches it."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm] = {}

    def __enter__(self) -> _StageBars:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for bar in self._bars.values():
            bar.close()

    def update(self, stage: str, step: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            position = STAGES.index(stage) if stage in STAGES else len(STAGES)
            bar = self._bars[stage] = tqdm(total=total, desc=f"{stage:>11}", position=position, leave=True)
        bar.n = step
        bar.refresh()


if __name__ == "__main__":
    sys.exit(main())
