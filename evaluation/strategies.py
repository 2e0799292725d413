"""Named prompt strategies: what the paper compares, kept as data so that anyone can add one.

A strategy is a set of :class:`EditSettings` overrides (prompt template, number of
captions N, caption lock, or any other knob) on top of the config's ``edit`` section, and
an ``oracle`` switch. The oracle skips the language model and takes the dataset's own
global descriptions of the input and output images as the one before and after caption:
it measures how good the edit could be if the LM wrote perfect captions. The ``output``
oracle is the paper's own evaluation: before = the BLIP caption, after = the output's
description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from editor.config import ConfigError
from editor.types import EditSettings
from evaluation.dataset import Turn
from sessions.config import EvaluationConfig, StrategyConfig
from sessions.models import CHAIN_MODES

#: ``none``: the language model writes the captions; ``global``: the dataset's descriptions do;
#: ``output``: the BLIP caption before, the dataset's description of the output after.
ORACLES = ("none", "global", "output")


#: The edit settings of the paper's code, as ``presets/paper.yaml``'s edit section.
PAPER_EDIT_SETTINGS: dict[str, Any] = {
    "steps": 100,
    "guidance_scale": 5.0,
    "cross_attention_guidance": 0.15,
    "num_captions": 1,
    "template": "zero_shot",
    "caption_lock": True,
}

BUILTIN_STRATEGIES: dict[str, StrategyConfig] = {
    "default": StrategyConfig(description="the config's edit section unchanged (what the bot does)"),
    "few_shot": StrategyConfig(
        {"template": "few_shot", "caption_lock": True}, description="few-shot prompt, caption lock on"
    ),
    "zero_shot": StrategyConfig(
        {"template": "zero_shot", "caption_lock": True}, description="zero-shot prompt, caption lock on"
    ),
    "few_shot_unlocked": StrategyConfig(
        {"template": "few_shot", "caption_lock": False}, description="few-shot prompt, caption lock off"
    ),
    "zero_shot_unlocked": StrategyConfig(
        {"template": "zero_shot", "caption_lock": False}, description="zero-shot prompt, caption lock off"
    ),
    "few_shot_n1": StrategyConfig(
        {"template": "few_shot", "caption_lock": True, "num_captions": 1},
        description="few-shot prompt, lock on, one caption each side",
    ),
    "few_shot_n10": StrategyConfig(
        {"template": "few_shot", "caption_lock": True, "num_captions": 10},
        description="few-shot prompt, lock on, ten captions each side",
    ),
    "oracle": StrategyConfig(
        oracle="global",
        description="no language model: the dataset's global descriptions of input and output",
    ),
    "compose": StrategyConfig(
        chain="compose",
        description="multi-turn without drift: every turn's direction on the first input's inversion",
    ),
    # The paper code's settings (nlx-group/pix2pix-onthefly); run them with
    # --config presets/paper.yaml, whose engine section holds the rest (BLIP, inversion, LM).
    "paper": StrategyConfig(
        dict(PAPER_EDIT_SETTINGS), description="the paper code's settings: zero-shot, N=1, lock, 100 steps"
    ),
    "paper_oracle": StrategyConfig(
        dict(PAPER_EDIT_SETTINGS),
        oracle="output",
        description="the paper's evaluation: before = BLIP caption, after = the output's description",
    ),
}


@dataclass(frozen=True)
class Strategy:
    """A strategy resolved against the config's edit defaults: the settings every edit uses."""

    name: str
    settings: EditSettings
    oracle: str
    description: str
    #: Multi-turn chain mode: ``reinvert`` (edit the previous output) or ``compose``.
    chain: str = "reinvert"

    def captions_for(self, turn: Turn) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """The before/after captions that replace the language model's, or None to ask it."""
        if self.oracle == "none":
            return None
        if self.oracle == "output":
            if not turn.target_description:
                raise MissingDescription(
                    f"Session {turn.session_id}, turn {turn.index} has no global description of its "
                    "output, which the paper_oracle strategy needs."
                )
            return (), (turn.target_description,)  # an empty before-list is the image's caption
        if not turn.source_description or not turn.target_description:
            raise MissingDescription(
                f"Session {turn.session_id}, turn {turn.index} has no global description of its input "
                "and output, which the oracle strategy needs."
            )
        return (turn.source_description,), (turn.target_description,)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs of this name the same experiment."""
        return {"settings": self.settings.to_dict(), "oracle": self.oracle, "chain": self.chain}


class MissingDescription(ValueError):
    """An oracle strategy met a turn without the dataset's descriptions."""


def available_strategies(config: EvaluationConfig) -> dict[str, StrategyConfig]:
    return {**BUILTIN_STRATEGIES, **config.strategies}


def resolve_strategies(
    config: EvaluationConfig, defaults: EditSettings, names: list[str] | tuple[str, ...]
) -> tuple[Strategy, ...]:
    """The named strategies, each checked; unknown names and bad overrides are config errors."""
    known = available_strategies(config)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"Unknown strategy {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))} "
            "(add your own under evaluation.strategies in config.yaml)."
        )
    strategies = []
    for name in dict.fromkeys(names):
        entry = known[name]
        where = f"evaluation.strategies.{name}"
        if entry.oracle not in ORACLES:
            raise ConfigError(f"{where}.oracle must be one of {', '.join(ORACLES)}, got {entry.oracle!r}.")
        if entry.chain not in CHAIN_MODES:
            raise ConfigError(f"{where}.chain must be one of {', '.join(CHAIN_MODES)}, got {entry.chain!r}.")
        try:
            settings = EditSettings.from_dict({**defaults.to_dict(), **entry.settings})
            settings.validate()
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}.settings: {error}") from error
        strategies.append(Strategy(name, settings, entry.oracle, entry.description, entry.chain))
    return tuple(strategies)
