"""Running the edits of an evaluation, resumably.

Every finished turn is appended to ``RUN_DIR/turns.jsonl`` (one JSON row, flushed and
synced) after its image is saved, so an interrupted run loses at most the turn in flight:
a rerun into the same folder skips every turn that has a row. Multi-turn sessions resume
from the first missing turn, reading the previous turn's saved output as its input.

Images are named as MagicBrush's own evaluator expects (``<id>_1.png`` for the first turn,
``<id>_inde_<k>.png`` single-turn, ``<id>_iter_<k>.png`` multi-turn, one folder per
session), so ``RUN_DIR/images/<strategy>`` can also be scored by the official script. The
first turn is the same edit under both protocols (ground-truth input, same seed), so it
is done once and shared.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from editor.logs import progress_bar
from editor.types import EditRequest, InvalidInput, Inversion, PriorEdit, SupportsEdit
from evaluation.dataset import Dataset, DatasetError, Session, Turn
from evaluation.metrics import Scorer
from evaluation.strategies import MissingDescription, Strategy

log = logging.getLogger(__name__)

PROTOCOLS = ("single", "multi")
#: Inversions kept for reuse: one per distinct input image recently edited.
INVERSION_CACHE_SIZE = 32


class RunDirConflict(ValueError):
    """The run folder holds results of a different experiment under the same names."""


@dataclass(frozen=True)
class TurnRow:
    """The outcome of one edited turn: where its image is, its scores, what the LM wrote."""

    strategy: str
    protocol: str
    session: str
    turn: int
    #: This is the session's last turn: the image multi-turn's final-turn score uses.
    last_turn: bool
    instruction: str
    #: Relative to the run folder; empty when the turn failed.
    image: str = ""
    l1: float | None = None
    l2: float | None = None
    clip_i: float | None = None
    dino: float | None = None
    clip_t: float | None = None
    caption: str = ""
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    used_fallback: bool = False
    seconds: float = 0.0
    unet_forwards: int = 0
    #: Why the turn could not be edited (bad input, missing description); empty on success.
    error: str = ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.strategy, self.protocol, self.session, self.turn)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurnRow:
        known = {f.name for f in fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        values["before"] = tuple(values.get("before", ()))
        values["after"] = tuple(values.get("after", ()))
        return cls(**values)


class RunLog:
    """``turns.jsonl``: the rows written so far, the last row of a key winning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[tuple[str, str, str, int], TurnRow] = {}
        if path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A run killed mid-write leaves half a line; drop it so appends start clean.
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            try:
                row = TurnRow.from_dict(json.loads(line))
            except (ValueError, TypeError) as error:
                log.warning(
                    "%s line %d is unreadable (%s); that turn will be redone", self.path, number, error
                )
                continue
            self.rows[row.key] = row

    def get(self, strategy: str, protocol: str, session: str, turn: int) -> TurnRow | None:
        return self.rows.get((strategy, protocol, session, turn))

    def add(self, row: TurnRow) -> None:
        line = json.dumps(row.to_dict(), ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        self.rows[row.key] = row


def prepare_run_dir(run_dir: Path, experiment: dict[str, Any], strategies: Iterable[Strategy]) -> None:
    """Create the folder, or check that resuming it continues the same experiment.

    ``run.json`` records the engine settings and seed (which must match) and every
    strategy's settings (a name reused with other settings would mix two experiments).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "run.json"
    experiment = _as_json(experiment)
    manifest: dict[str, Any] = {"experiment": experiment, "strategies": {}}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("experiment") != experiment:
            raise RunDirConflict(
                f"{run_dir} holds a run with other engine settings or seed (see its run.json); "
                "choose another --out folder to start a new run."
            )
    for strategy in strategies:
        recorded = manifest["strategies"].get(strategy.name)
        fingerprint = _as_json(strategy.fingerprint())
        if recorded is not None and {name: recorded.get(name) for name in fingerprint} != fingerprint:
            raise RunDirConflict(
                f"Strategy {strategy.name!r} has other settings than when {run_dir} was started; "
                "give the changed strategy a new name or choose another --out folder."
            )
        manifest["strategies"][strategy.name] = {**fingerprint, "description": strategy.description}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _as_json(value: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from run.json (tuples become lists), so that comparisons are fair."""
    return json.loads(json.dumps(value))


def image_name(session: str, turn: int, protocol: str) -> str:
    if turn == 1:
        return f"{session}_1.png"
    return f"{session}_{'inde' if protocol == 'single' else 'iter'}_{turn}.png"


class Evaluation:
    """Edits and scores the turns of one dataset into one run folder."""

    def __init__(
        self, editor: SupportsEdit, scorer: Scorer, dataset: Dataset, run_dir: Path, seed: int
    ) -> None:
        self.editor = editor
        self.scorer = scorer
        self.dataset = dataset
        self.run_dir = run_dir
        self.seed = seed
        self.log = RunLog(run_dir / "turns.jsonl")
        self._inversions: OrderedDict[str, Inversion] = OrderedDict()

    def run(self, protocol: str, strategies: Sequence[Strategy]) -> None:
        """Edit every turn that has no row yet; sessions outermost so inversions are shared."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        work = [
            (session, strategy, self.pending_turns(protocol, strategy, session))
            for session in self.dataset.sessions
            for strategy in strategies
        ]
        total = sum(len(turns) for _, _, turns in work)
        with progress_bar(total, f"{protocol}-turn", "edit") as bar:
            for session, strategy, turns in work:
                for row in self._run_turns(protocol, strategy, session, turns):
                    self.log.add(row)
                    bar.update(1)

    def pending_turns(self, protocol: str, strategy: Strategy, session: Session) -> list[Turn]:
        """Turns without a finished row; multi-turn redoes everything after the first gap."""
        done = [
            self._finished(self.log.get(strategy.name, protocol, session.id, t.index)) for t in session.turns
        ]
        if protocol == "single":
            return [turn for turn, finished in zip(session.turns, done, strict=True) if not finished]
        first_gap = done.index(False) if False in done else len(done)
        return list(session.turns[first_gap:])

    def _finished(self, row: TurnRow | None) -> bool:
        return row is not None and (bool(row.error) or (self.run_dir / row.image).is_file())

    def _run_turns(
        self, protocol: str, strategy: Strategy, session: Session, turns: list[Turn]
    ) -> Iterator[TurnRow]:
        previous = None
        #: Multi-turn with chain mode compose: the turns so far, whose directions join each edit's.
        earlier: list[TurnRow] = []
        if protocol == "multi" and turns and turns[0].index > 1:
            rows = [self.log.get(strategy.name, protocol, session.id, i) for i in range(1, turns[0].index)]
            earlier = [row for row in rows if row is not None]
            previous = earlier[-1] if earlier else None
        compose = protocol == "multi" and strategy.chain == "compose"
        for turn in turns:
            if protocol == "multi" and previous is not None and previous.error:
                row = self._row(protocol, strategy, session, turn)
                previous = replace(row, error=f"not edited: turn {previous.turn} of this session failed")
                yield previous
                continue
            source = None
            prior: tuple[PriorEdit, ...] = ()
            if compose and earlier:
                source = session.turns[0].source.read_bytes()  # its inversion is cached by turn 1
                strength = strategy.settings.direction_strength
                prior = tuple(PriorEdit(tuple(row.before), tuple(row.after), strength) for row in earlier)
            elif protocol == "multi" and previous is not None:
                source = (self.run_dir / previous.image).read_bytes()
            previous = self._edit_turn(protocol, strategy, session, turn, source, prior=prior)
            earlier.append(previous)
            yield previous

    def _row(self, protocol: str, strategy: Strategy, session: Session, turn: Turn) -> TurnRow:
        return TurnRow(
            strategy=strategy.name,
            protocol=protocol,
            session=session.id,
            turn=turn.index,
            last_turn=turn.index == session.turns[-1].index,
            instruction=turn.instruction,
        )

    def _edit_turn(
        self,
        protocol: str,
        strategy: Strategy,
        session: Session,
        turn: Turn,
        source: bytes | None,
        *,
        prior: tuple[PriorEdit, ...] = (),
    ) -> TurnRow:
        """Edit one turn (``source`` None: its ground-truth input; ``prior``: earlier turns to
        compose with it), save and score the result."""
        row = self._row(protocol, strategy, session, turn)
        if turn.index == 1:
            other = self.log.get(strategy.name, "multi" if protocol == "single" else "single", session.id, 1)
            if other is not None and not other.error and self._finished(other):
                return replace(other, protocol=protocol)
        try:
            truth = _decode(
                turn.target.read_bytes(), f"the ground truth of session {session.id}, turn {turn.index}"
            )
            if source is None:
                source = turn.source.read_bytes()
            digest = hashlib.sha256(source).hexdigest()
            request = EditRequest(
                image=source,
                instruction=turn.instruction,
                settings=strategy.settings,
                seed=self.seed,
                inversion=self._inversions.get(digest),
                captions=strategy.captions_for(turn),
                prior=prior,
            )
            result = self.editor.edit(request)
        except (InvalidInput, MissingDescription, DatasetError) as error:
            log.warning("session %s turn %d (%s): %s", session.id, turn.index, strategy.name, error)
            return replace(row, error=str(error))
        self._remember(digest, result.inversion)

        relative = Path("images") / strategy.name / session.id / image_name(session.id, turn.index, protocol)
        _save_png(result.image, self.run_dir / relative)
        scores = self.scorer.score(result.image, truth, turn.local_description)
        return replace(
            row,
            image=relative.as_posix(),
            l1=scores.l1,
            l2=scores.l2,
            clip_i=scores.clip_i,
            dino=scores.dino,
            clip_t=scores.clip_t,
            caption=result.caption,
            before=tuple(result.before_captions),
            after=tuple(result.after_captions),
            used_fallback=result.used_fallback_captions,
            seconds=round(sum(result.timings.values()), 3),
            unet_forwards=result.counts.total_unet_forwards,
        )

    def _remember(self, digest: str, inversion: Inversion) -> None:
        """Keep the inversion: the other strategies edit the same input image next."""
        self._inversions[digest] = inversion
        self._inversions.move_to_end(digest)
        while len(self._inversions) > INVERSION_CACHE_SIZE:
            self._inversions.popitem(last=False)


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"Cannot decode {what}: {error}.") from error
    return image


def _save_png(image: Image.Image, path: Path) -> None:
    """Write through a temporary file so that a killed run never leaves half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)
