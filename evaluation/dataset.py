"""MagicBrush, read from either of its two published layouts.

The test split ships as a zip (a folder): ``edit_sessions.json`` (or ``edit_turns.json``)
names each turn's input, mask and output file under ``images/<img_id>/``, and
``global_descriptions.json`` / ``local_descriptions.json`` describe the images. The hub
copy (train and dev splits only) is a set of parquet files with one row per turn
(``img_id``, ``turn_index``, ``source_img``, ``mask_img``, ``instruction``, ``target_img``),
each image a ``{"bytes", "path"}`` struct, and no descriptions. Both become the same
:class:`Dataset`; images are read only when a turn is evaluated, because the dev split
alone is 1.5 GB of PNGs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Names of the turn files of the folder layout, most useful first.
SESSION_FILES = ("edit_sessions.json", "edit_turns.json")
PARQUET_IMAGE_COLUMNS = ("source_img", "mask_img", "target_img")
PARQUET_COLUMNS = ("img_id", "turn_index", "instruction", *PARQUET_IMAGE_COLUMNS)


class DatasetError(ValueError):
    """The data folder is not a MagicBrush layout we can read; the message says what is wrong."""


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives: a file, or one cell of a parquet file."""

    path: Path
    row_group: int | None = None
    row: int | None = None
    column: str | None = None

    def read_bytes(self) -> bytes:
        if self.column is None or self.row is None:  # a file, not a parquet cell
            try:
                return self.path.read_bytes()
            except OSError as error:
                raise DatasetError(f"Cannot read image {self.path}: {error.strerror}.") from error
        cells = _parquet_column(self.path, self.row_group, self.column)
        cell = cells[self.row]
        if cell and cell.get("bytes"):
            return cell["bytes"]
        raise DatasetError(
            f"{self.path.name}: row {self.row} of row group {self.row_group} has no image bytes in "
            f"column {self.column!r}."
        )


@functools.lru_cache(maxsize=4)
def _parquet_column(path: Path, row_group: int | None, column: str) -> list[dict[str, Any]]:
    """One column of one row group: turns of a session sit together, so this cache hits."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(row_group, columns=[column]).column(0).to_pylist()


@dataclass(frozen=True)
class Turn:
    """One edit of a session, with its ground truth."""

    session_id: str
    #: 1-based, as MagicBrush counts turns.
    index: int
    instruction: str
    #: The ground-truth input of this turn (the original image, or the previous turn's output).
    source: ImageRef
    mask: ImageRef
    target: ImageRef
    #: Global descriptions of the input and output images (folder layout only).
    source_description: str | None = None
    target_description: str | None = None
    #: The local description of the output: the text CLIP-T is measured against.
    local_description: str | None = None


@dataclass(frozen=True)
class Session:
    id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Dataset:
    #: ``folder`` (the test-set zip) or ``parquet`` (the hub).
    layout: str
    root: Path
    sessions: tuple[Session, ...]

    @property
    def turn_count(self) -> int:
        return sum(len(session.turns) for session in self.sessions)

    @property
    def has_descriptions(self) -> bool:
        return any(turn.target_description for session in self.sessions for turn in session.turns)


def load_dataset(root: str | Path, *, split: str = "dev", limit: int | None = None) -> Dataset:
    """Read the layout found at ``root``; ``limit`` keeps the first N sessions."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"The data folder {root} does not exist.")
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be at least 1, got {limit}.")
    folder = _folder_with_session_file(root)
    if folder is not None:
        dataset = _load_folder(folder)
    else:
        parquet_files = sorted(root.rglob("*.parquet"))
        if not parquet_files:
            raise DatasetError(
                f"No MagicBrush data in {root}: expected edit_sessions.json (the test-set zip) or "
                "*.parquet files (the hub's osunlp/MagicBrush)."
            )
        dataset = _load_parquet(root, _files_of_split(parquet_files, split))
    if not dataset.sessions:
        raise DatasetError(f"{root} holds no edit sessions.")
    if limit is not None:
        dataset = Dataset(dataset.layout, dataset.root, dataset.sessions[:limit])
    return dataset


def _folder_with_session_file(root: Path) -> Path | None:
    """``root`` itself, or ``root/test`` as the unpacked zip names it."""
    for folder in (root, root / "test"):
        if any((folder / name).is_file() for name in SESSION_FILES):
            return folder
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DatasetError(f"Cannot read {path}: {error.strerror}.") from error
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}.") from error


def _load_folder(folder: Path) -> Dataset:
    sessions_file = folder / "edit_sessions.json"
    if sessions_file.is_file():
        raw_sessions = _read_json(sessions_file)
        if not isinstance(raw_sessions, dict):
            raise DatasetError(f"{sessions_file} must map each img_id to its list of turns.")
    else:
        sessions_file = folder / "edit_turns.json"
        raw_turns = _read_json(sessions_file)
        if not isinstance(raw_turns, list):
            raise DatasetError(f"{sessions_file} must be a list of turns.")
        raw_sessions = {}
        for position, raw in enumerate(raw_turns):
            name = _field(raw, "input", f"{sessions_file.name}[{position}]")
            raw_sessions.setdefault(_image_id(name), []).append(raw)
    global_descriptions = _descriptions(folder / "global_descriptions.json")
    local_descriptions = _descriptions(folder / "local_descriptions.json")

    sessions = []
    for session_id, raw_turns in raw_sessions.items():
        where = f"{sessions_file.name}, session {session_id}"
        if not isinstance(raw_turns, list) or not raw_turns:
            raise DatasetError(f"{where}: expected a non-empty list of turns.")
        turns = []
        for index, raw in enumerate(raw_turns, start=1):
            names = {key: _field(raw, key, f"{where}, turn {index}") for key in ("input", "mask", "output")}
            refs = {}
            for key, name in names.items():
                path = folder / "images" / str(session_id) / name
                if not path.is_file():
                    raise DatasetError(f"{where}, turn {index}: the {key} image {path} is missing.")
                refs[key] = ImageRef(path)
            session_globals = global_descriptions.get(str(session_id), {})
            turns.append(
                Turn(
                    session_id=str(session_id),
                    index=index,
                    instruction=_field(raw, "instruction", f"{where}, turn {index}"),
                    source=refs["input"],
                    mask=refs["mask"],
                    target=refs["output"],
                    source_description=session_globals.get(names["input"]),
                    target_description=session_globals.get(names["output"]),
                    local_description=local_descriptions.get(str(session_id), {}).get(names["output"]),
                )
            )
        sessions.append(Session(str(session_id), tuple(turns)))
    return Dataset("folder", folder, tuple(sessions))


def _field(raw: Any, key: str, where: str) -> str:
    if not isinstance(raw, dict) or not isinstance(raw.get(key), str):
        raise DatasetError(f"{where}: the turn has no {key!r} text.")
    return raw[key]


def _image_id(file_name: str) -> str:
    """``139306-output1.png`` belongs to session ``139306``."""
    return file_name.split("-", 1)[0]


def _descriptions(path: Path) -> dict[str, dict[str, str]]:
    """``{img_id: {file name: description}}``; empty when the file is absent."""
    if not path.is_file():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(value, dict) for value in data.values()):
        raise DatasetError(f"{path} must map each img_id to {{image file: description}}.")
    return data


def _files_of_split(files: list[Path], split: str) -> list[Path]:
    """The hub names shards ``<split>-00000-of-00001.parquet``; pick the asked split's.

    A lone parquet file is taken whatever its name (a user's own extract of one split).
    """
    if len(files) == 1:
        return files
    chosen = [path for path in files if path.name.split("-", 1)[0] == split]
    if chosen:
        return chosen
    splits = sorted({path.name.split("-", 1)[0] for path in files})
    raise DatasetError(f"No parquet files of split {split!r}; found splits: {', '.join(splits)}.")


def _load_parquet(root: Path, files: Iterable[Path]) -> Dataset:
    import pyarrow.parquet as pq

    by_session: dict[str, list[Turn]] = {}
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # pyarrow raises several types for an unreadable file
            raise DatasetError(f"{path} is not a readable parquet file: {error}.") from error
        missing = [name for name in PARQUET_COLUMNS if name not in parquet.schema_arrow.names]
        if missing:
            raise DatasetError(f"{path.name} lacks the MagicBrush column(s) {', '.join(missing)}.")
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["img_id", "turn_index", "instruction"])
            for row, (session_id, turn_index, instruction) in enumerate(
                zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True)
            ):
                refs = {column: ImageRef(path, group, row, column) for column in PARQUET_IMAGE_COLUMNS}
                by_session.setdefault(str(session_id), []).append(
                    Turn(
                        session_id=str(session_id),
                        index=int(turn_index),
                        instruction=str(instruction or ""),
                        source=refs["source_img"],
                        mask=refs["mask_img"],
                        target=refs["target_img"],
                    )
                )
    sessions = []
    for session_id, turns in by_session.items():
        ordered = tuple(sorted(turns, key=lambda turn: turn.index))
        indices = [turn.index for turn in ordered]
        if indices != list(range(1, len(ordered) + 1)):
            raise DatasetError(f"Session {session_id}: turn_index values {indices} are not 1, 2, ...")
        sessions.append(Session(session_id, ordered))
    return Dataset("parquet", root, tuple(sessions))
