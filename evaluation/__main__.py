"""Evaluate Pix2Pix-OnTheFly on MagicBrush, resumably, for one or more prompt strategies.

    python -m evaluation --data DIR --protocol single|multi [...] --out RUN_DIR
        [--config PATH] [--strategy NAME ...] [--limit N] [--split dev]
    python -m evaluation tiny-models DIR     # tiny engine, CLIP and DINO models + DIR/config.yaml

Rerunning the same command continues where an interrupted run stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from editor.config import ConfigError, EngineConfig, find_config
from editor.logs import setup_logging
from editor.types import InvalidInput
from evaluation.dataset import DatasetError, load_dataset
from evaluation.runner import PROTOCOLS, RunDirConflict
from evaluation.strategies import Strategy, available_strategies, resolve_strategies
from sessions.config import AppConfig, load_config

log = logging.getLogger("evaluation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="onthefly-eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", type=Path, help="MagicBrush: the test-set folder or the hub's parquet files"
    )
    parser.add_argument(
        "--protocol",
        dest="protocols",
        choices=PROTOCOLS,
        nargs="+",
        help="single: every turn from its ground-truth input; multi: turns chained on our own "
        "outputs, the final image scored (both: the models load once, the first turns are shared)",
    )
    parser.add_argument(
        "--out", type=Path, help="run folder: images, turns.csv, summary.json, results.md, plots"
    )
    parser.add_argument(
        "--config", type=Path, help="config file (default: ./config.yaml if there is one, else the defaults)"
    )
    parser.add_argument(
        "--strategy",
        dest="strategies",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="prompt strategies to compare (default: default); see --list-strategies",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N sessions")
    parser.add_argument(
        "--split", default="dev", help="parquet layout only: which split's files (default: dev)"
    )
    parser.add_argument("--list-strategies", action="store_true", help="print the known strategies and exit")
    args = parser.parse_args(argv)
    if not args.list_strategies:
        flags = {"--data": args.data, "--protocol": args.protocols, "--out": args.out}
        missing = [flag for flag, value in flags.items() if value is None]
        if missing:
            parser.error("the following arguments are required: " + ", ".join(missing))
    return args


def experiment_facts(engine: EngineConfig, seed: int) -> dict[str, Any]:
    """What must not change between a run and its resumption: models, method settings, seed."""
    facts = dataclasses.asdict(engine)
    for irrelevant in ("base_dir", "device", "limits"):
        facts.pop(irrelevant)
    return {"engine": facts, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tiny-models"]:
        return _tiny_models(argv[1:])
    args = parse_args(argv)
    setup_logging()
    try:
        config = load_config(find_config(args.config))
        if args.list_strategies:
            for name, entry in sorted(available_strategies(config.evaluation).items()):
                details = f"settings={entry.settings} oracle={entry.oracle}"
                print(f"{name:20} {entry.description or 'custom'}  {details}")
            return 0
        return _evaluate(args, config)
    except (ConfigError, DatasetError, RunDirConflict, InvalidInput) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume from {args.out}", file=sys.stderr)
        return 130


def _tiny_models(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation tiny-models",
        description="Write the engine's tiny random-weight models, CLIP and DINO stand-ins, and a "
        "config.yaml for all of them (offline runs of the bot, the console and the evaluation).",
    )
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    from evaluation.tiny import write_tiny_models

    config_path = write_tiny_models(args.folder)
    print(f"tiny models and {config_path} written")
    return 0


def _evaluate(args: argparse.Namespace, app: AppConfig) -> int:
    from evaluation.metrics import Scorer
    from evaluation.report import write_reports
    from evaluation.runner import Evaluation, prepare_run_dir

    config = app.evaluation
    strategies = resolve_strategies(config, app.edit, args.strategies or ["default"])
    dataset = load_dataset(args.data, split=args.split, limit=args.limit)
    _check_dataset_fits(dataset.has_descriptions, dataset.layout, strategies)
    prepare_run_dir(args.out, experiment_facts(app.engine, config.seed), strategies)
    log.info(
        "%s layout, %d sessions, %d turns; strategies: %s",
        dataset.layout,
        len(dataset.sessions),
        dataset.turn_count,
        ", ".join(s.name for s in strategies),
    )

    from editor import loading
    from editor.engine import Editor

    # Everything that can be checked without weights first: templates, then the metric models.
    templates = loading.template_names(app.engine)
    unknown = sorted({s.settings.template for s in strategies if s.oracle == "none"} - set(templates))
    if unknown:
        raise ConfigError(f"Unknown prompt template(s) {', '.join(unknown)}; known: {', '.join(templates)}.")
    clip, dino = (
        loading.model_source(f"evaluation.{name}", getattr(config, name), config.base_dir)
        for name in ("clip", "dino")
    )
    editor = Editor.load(app.engine, app.edit)
    scorer = Scorer.from_pretrained(clip, dino, config.device)
    evaluation = Evaluation(editor, scorer, dataset, args.out, config.seed)
    try:
        for protocol in dict.fromkeys(args.protocols):
            evaluation.run(protocol, strategies)
    finally:
        # Even an interrupted run leaves reports of what it finished.
        write_reports(args.out, evaluation.log.rows.values())
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/turns.csv, summary.json, results.md and plots")
    return 0


def _check_dataset_fits(has_descriptions: bool, layout: str, strategies: tuple[Strategy, ...]) -> None:
    if has_descriptions:
        return
    oracles = [s.name for s in strategies if s.oracle != "none"]
    if oracles:
        raise ConfigError(
            f"Strategy {', '.join(oracles)} needs the dataset's global descriptions, which the {layout} "
            "layout lacks; use the test-set folder (with global_descriptions.json)."
        )
    log.warning("the %s layout has no local descriptions: CLIP-T cannot be computed (reported n/a)", layout)


if __name__ == "__main__":
    sys.exit(main())
