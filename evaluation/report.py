"""What a run folder tells its reader: per-turn CSV, summary.json, a markdown table, plots.

Everything is recomputed from ``turns.jsonl`` after each run, so the reports always cover
every finished turn in the folder (both protocols, every strategy ever run into it).
Single-turn scores every turn ("all-turn"); multi-turn scores each session's last turn
("final-turn"), as MagicBrush's evaluator does; both also keep means per turn index.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from evaluation.metrics import HIGHER_IS_BETTER, METRICS
from evaluation.runner import PROTOCOLS, TurnRow

METRIC_LABELS = {"l1": "L1", "l2": "L2", "clip_i": "CLIP-I", "dino": "DINO", "clip_t": "CLIP-T"}

#: MagicBrush paper (Zhang et al., NeurIPS 2023), Table 2, transcribed: each method's L1, L2, CLIP-I,
#: DINO and CLIP-T single-turn, then the same five multi-turn.
_TABLE_2 = """
InstructPix2Pix                          0.1122 0.0371 0.8524 0.7428 0.2764 0.1584 0.0598 0.7924 0.6177 0.2726
InstructPix2Pix fine-tuned on MagicBrush 0.0625 0.0203 0.9332 0.8987 0.2781 0.0964 0.0353 0.8924 0.8273 0.2754
Null-text inversion                      0.0749 0.0197 0.8827 0.8206 0.2737 0.1057 0.0335 0.8468 0.7529 0.2710
HIVE                                     0.1092 0.0341 0.8519 0.7500 0.2752 0.1521 0.0557 0.8004 0.6463 0.2673
SD-SDEdit                                0.1014 0.0278 0.8526 0.7726 0.2777 0.1616 0.0602 0.7933 0.6212 0.2694
Text2LIVE                                0.0636 0.0169 0.9244 0.8807 0.2424 0.0989 0.0284 0.8795 0.7926 0.2716
"""


def _published(table: str) -> dict[str, dict[str, tuple[float, ...]]]:
    """``{protocol: {method: (L1, L2, CLIP-I, DINO, CLIP-T)}}`` from the transcribed table."""
    published: dict[str, dict[str, tuple[float, ...]]] = {protocol: {} for protocol in ("single", "multi")}
    for line in table.strip().splitlines():
        method, *numbers = line.rsplit(maxsplit=10)
        values = tuple(map(float, numbers))
        published["single"][method], published["multi"][method] = values[:5], values[5:]
    return published


PUBLISHED = _published(_TABLE_2)
PROTOCOL_LABELS = {"single": "single-turn (all turns)", "multi": "multi-turn (final turn)"}


def _session_order(session: str) -> tuple[int, int | str]:
    return (0, int(session)) if session.isdigit() else (1, session)


def sorted_rows(rows: Iterable[TurnRow]) -> list[TurnRow]:
    return sorted(rows, key=lambda row: (row.protocol, row.strategy, _session_order(row.session), row.turn))


def _means(rows: list[TurnRow]) -> dict[str, Any]:
    scored = [row for row in rows if not row.error]
    metrics, counts = {}, {}
    for metric in METRICS:
        values = [getattr(row, metric) for row in scored if getattr(row, metric) is not None]
        metrics[metric] = sum(values) / len(values) if values else None
        counts[metric] = len(values)
    return {
        "count": len(scored),
        "failed": len(rows) - len(scored),
        "metrics": metrics,
        "metric_counts": counts,
    }


def summarise(rows: Iterable[TurnRow]) -> dict[str, dict[str, Any]]:
    """``{protocol: {strategy: {count, failed, metrics, metric_counts, by_turn}}}``."""
    groups: dict[tuple[str, str], list[TurnRow]] = defaultdict(list)
    for row in rows:
        groups[(row.protocol, row.strategy)].append(row)
    summary: dict[str, dict[str, Any]] = {}
    for (protocol, strategy), group in sorted(groups.items()):
        scored = group if protocol == "single" else [row for row in group if row.last_turn]
        by_turn: dict[int, list[TurnRow]] = defaultdict(list)
        for row in group:
            by_turn[row.turn].append(row)
        summary.setdefault(protocol, {})[strategy] = {
            **_means(scored),
            "by_turn": {str(turn): _means(turn_rows) for turn, turn_rows in sorted(by_turn.items())},
        }
    return summary


def write_csv(rows: list[TurnRow], path: Path) -> None:
    names = [field.name for field in fields(TurnRow)]
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        for row in rows:
            values = row.to_dict()
            values["before"] = " | ".join(row.before)
            values["after"] = " | ".join(row.after)
            writer.writerow(values)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown_table(summary: dict[str, dict[str, Any]], strategies: dict[str, Any]) -> str:
    header = " | ".join(
        f"{METRIC_LABELS[metric]} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}" for metric in METRICS
    )
    lines = [
        "# MagicBrush evaluation",
        "",
        "## This run",
        "",
        "Pix2Pix-OnTheFly, scored by this project's harness (`python -m evaluation`). "
        "n = images scored; failed = turns that could not be edited.",
        "",
        f"| protocol | strategy | n | failed | {header} |",
        "|---|---|---|---|" + "---|" * len(METRICS),
    ]
    for protocol in PROTOCOLS:
        for strategy, stats in summary.get(protocol, {}).items():
            cells = " | ".join(_cell(stats["metrics"][metric]) for metric in METRICS)
            counts = f"{stats['count']} | {stats['failed']}"
            lines.append(f"| {PROTOCOL_LABELS[protocol]} | {strategy} | {counts} | {cells} |")
    described = [name for name in strategies if any(name in summary.get(p, {}) for p in PROTOCOLS)]
    if described:
        lines += ["", "Strategies:", ""]
        for name in described:
            entry = strategies[name]
            settings = ", ".join(f"{key}={value}" for key, value in entry["settings"].items())
            oracle = "" if entry["oracle"] == "none" else f"; oracle: {entry['oracle']} descriptions"
            lines.append(f"- `{name}`: {entry.get('description') or 'custom'} ({settings}{oracle})")
    lines += [
        "",
        "## Published MagicBrush baselines",
        "",
        "**Published, different harness — not directly comparable** (MagicBrush paper, Table 2; "
        "their models, resolution and scripts, on the full 535-session test split).",
        "",
        f"| method | protocol | {header} |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for protocol in PROTOCOLS:
        for method, numbers in PUBLISHED[protocol].items():
            cells = " | ".join(f"{value:.4f}" for value in numbers)
            lines.append(f"| {method} | {PROTOCOL_LABELS[protocol]} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_metrics(summary: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per metric, a bar per strategy and protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [protocol for protocol in PROTOCOLS if protocol in summary]
    strategies = sorted({strategy for protocol in protocols for strategy in summary[protocol]})
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4), squeeze=False)
    width = 0.8 / max(1, len(protocols))
    for axis, metric in zip(axes[0], METRICS, strict=True):
        for offset, protocol in enumerate(protocols):
            values = [
                (summary[protocol].get(strategy, {}).get("metrics", {}).get(metric) or 0.0)
                for strategy in strategies
            ]
            positions = [index + offset * width for index in range(len(strategies))]
            axis.bar(positions, values, width=width, label=PROTOCOL_LABELS[protocol])
        axis.set_xticks([index + width * (len(protocols) - 1) / 2 for index in range(len(strategies))])
        axis.set_xticklabels(strategies, rotation=30, ha="right")
        axis.set_title(
            f"{METRIC_LABELS[metric]} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)"
        )
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_turns(summary: dict[str, dict[str, Any]], path: Path) -> None:
    """Multi-turn: each metric at turn 1, 2, 3 of the chain (error accumulation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4), squeeze=False)
    for axis, metric in zip(axes[0], METRICS, strict=True):
        for strategy, stats in summary["multi"].items():
            points = [
                (int(turn), turn_stats["metrics"][metric])
                for turn, turn_stats in stats["by_turn"].items()
                if turn_stats["metrics"][metric] is not None
            ]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=strategy)
        axis.set_xlabel("turn of the session")
        axis.set_title(METRIC_LABELS[metric])
        axis.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend()
    figure.suptitle("Multi-turn: each turn scored against its ground truth (sessions reaching that turn)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_reports(run_dir: Path, rows: Iterable[TurnRow]) -> dict[str, Any]:
    """turns.csv, summary.json, results.md and the plots; returns the summary written."""
    ordered = sorted_rows(rows)
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    summary = summarise(ordered)
    write_csv(ordered, run_dir / "turns.csv")
    document = {
        "protocols": summary,
        "strategies": manifest["strategies"],
        "experiment": manifest["experiment"],
    }
    (run_dir / "summary.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (run_dir / "results.md").write_text(markdown_table(summary, manifest["strategies"]), encoding="utf-8")
    if summary:
        plot_metrics(summary, run_dir / "metrics.png")
    if "multi" in summary:
        plot_turns(summary, run_dir / "multi_turn.png")
    return document
