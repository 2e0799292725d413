"""MagicBrush loading from both layouts, on a tiny synthetic copy written by these builders.

The builders are imported by the other evaluation tests: the synthetic dataset has three
sessions (1, 3 and 2 turns) of 64x64 single-colour images, so metrics can be worked out
by hand from the colours below.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from evaluation.dataset import DatasetError, load_dataset

#: session id -> colour of the input image, then one (instruction, output colour) per turn.
SESSIONS: dict[str, tuple[tuple[int, int, int], list[tuple[str, tuple[int, int, int]]]]] = {
    "101": ((255, 255, 255), [("make it black", (0, 0, 0))]),
    "202": (
        (0, 0, 0),
        [("paint it red", (255, 0, 0)), ("now make it green", (0, 255, 0)), ("turn it blue", (0, 0, 255))],
    ),
    "303": ((128, 128, 128), [("brighten it", (255, 255, 255)), ("darken it again", (0, 0, 0))]),
}
SIZE = 64


def png(colour: tuple[int, int, int], size: int = SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png() -> bytes:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_of(session: str, turn: int) -> tuple[int, int, int]:
    """Turn 0 is the input image; turn k the ground-truth output of turn k."""
    start, turns = SESSIONS[session]
    return start if turn == 0 else turns[turn - 1][1]


def global_description(session: str, turn: int) -> str:
    return f"a {'-'.join(map(str, colour_of(session, turn)))} square, image {turn} of session {session}"


def local_description(session: str, turn: int) -> str:
    return f"a square of colour {colour_of(session, turn)}"


def write_folder_dataset(root: Path, only: tuple[str, ...] = tuple(SESSIONS)) -> Path:
    """The test-set zip's layout: edit_sessions.json, images/<id>/, description files."""
    sessions, globals_, locals_ = {}, {}, {}
    for session in only:
        turns = SESSIONS[session][1]
        folder = root / "images" / session
        folder.mkdir(parents=True)
        (folder / f"{session}-input.png").write_bytes(png(colour_of(session, 0)))
        globals_[session] = {f"{session}-input.png": global_description(session, 0)}
        locals_[session] = {}
        sessions[session] = []
        for index, (instruction, _) in enumerate(turns, start=1):
            source = f"{session}-input.png" if index == 1 else f"{session}-output{index - 1}.png"
            output, mask = f"{session}-output{index}.png", f"{session}-mask{index}.png"
            (folder / output).write_bytes(png(colour_of(session, index)))
            (folder / mask).write_bytes(mask_png())
            sessions[session].append(
                {"input": source, "mask": mask, "instruction": instruction, "output": output}
            )
            globals_[session][output] = global_description(session, index)
            locals_[session][output] = local_description(session, index)
    (root / "edit_sessions.json").write_text(json.dumps(sessions), encoding="utf-8")
    (root / "global_descriptions.json").write_text(json.dumps(globals_), encoding="utf-8")
    (root / "local_descriptions.json").write_text(json.dumps(locals_), encoding="utf-8")
    return root


def write_parquet_dataset(root: Path, split: str = "dev", row_group_size: int = 2) -> Path:
    """The hub's layout: data/<split>-00000-of-00001.parquet, images as {bytes, path} structs.

    Small row groups make a session straddle two groups, as it can on the hub.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns: dict[str, list] = {name: [] for name in ("img_id", "turn_index", "source_img", "mask_img")}
    columns |= {"instruction": [], "target_img": []}
    for session, (_, turns) in SESSIONS.items():
        for index, (instruction, _) in enumerate(turns, start=1):
            columns["img_id"].append(session)
            columns["turn_index"].append(index)
            columns["source_img"].append({"bytes": png(colour_of(session, index - 1)), "path": None})
            columns["mask_img"].append({"bytes": mask_png(), "path": None})
            columns["instruction"].append(instruction)
            columns["target_img"].append({"bytes": png(colour_of(session, index)), "path": None})
    schema = pa.schema(
        [
            ("img_id", pa.string()),
            ("turn_index", pa.int32()),
            ("source_img", image_type),
            ("mask_img", image_type),
            ("instruction", pa.string()),
            ("target_img", image_type),
        ]
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    path = root / "data" / f"{split}-00000-of-00001.parquet"
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)
    return root


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "magicbrush-test")


@pytest.fixture
def parquet_data(tmp_path: Path) -> Path:
    return write_parquet_dataset(tmp_path / "magicbrush-hub")


def _colour(image_bytes: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(image_bytes)).convert("RGB").getpixel((0, 0))


@pytest.mark.parametrize("layout", ["folder", "parquet"])
def test_both_layouts_give_the_same_sessions_turns_and_images(
    layout: str, folder_data: Path, parquet_data: Path
) -> None:
    dataset = load_dataset(folder_data if layout == "folder" else parquet_data)

    assert dataset.layout == layout
    assert [session.id for session in dataset.sessions] == ["101", "202", "303"]
    assert dataset.turn_count == 6
    for session in dataset.sessions:
        assert [turn.index for turn in session.turns] == list(range(1, len(SESSIONS[session.id][1]) + 1))
        for turn in session.turns:
            assert turn.instruction == SESSIONS[session.id][1][turn.index - 1][0]
            assert _colour(turn.source.read_bytes()) == colour_of(session.id, turn.index - 1)
            assert _colour(turn.target.read_bytes()) == colour_of(session.id, turn.index)
            mask = Image.open(io.BytesIO(turn.mask.read_bytes()))
            assert mask.getpixel((32, 32)) == 255
            assert mask.getpixel((0, 0)) == 0


def test_the_folder_layout_carries_global_and_local_descriptions(folder_data: Path) -> None:
    dataset = load_dataset(folder_data)
    turn = dataset.sessions[1].turns[1]

    assert dataset.has_descriptions
    assert turn.source_description == global_description("202", 1)
    assert turn.target_description == global_description("202", 2)
    assert turn.local_description == local_description("202", 2)


def test_the_parquet_layout_has_no_descriptions(parquet_data: Path) -> None:
    dataset = load_dataset(parquet_data)

    assert not dataset.has_descriptions
    assert all(turn.local_description is None for session in dataset.sessions for turn in session.turns)


def test_the_unzipped_test_folder_is_found_under_its_parent(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path / "zip" / "test")

    assert load_dataset(tmp_path / "zip").turn_count == 6


def test_edit_turns_json_alone_is_grouped_into_sessions_by_image_id(folder_data: Path) -> None:
    sessions = json.loads((folder_data / "edit_sessions.json").read_text())
    turns = [turn for session_turns in sessions.values() for turn in session_turns]
    (folder_data / "edit_sessions.json").unlink()
    (folder_data / "edit_turns.json").write_text(json.dumps(turns))

    dataset = load_dataset(folder_data)

    assert [len(session.turns) for session in dataset.sessions] == [1, 3, 2]


def test_limit_keeps_the_first_sessions(folder_data: Path) -> None:
    dataset = load_dataset(folder_data, limit=2)

    assert [session.id for session in dataset.sessions] == ["101", "202"]


def test_parquet_split_is_chosen_by_file_name(parquet_data: Path) -> None:
    write_parquet_dataset(parquet_data, split="train")
    (parquet_data / "data" / "train-00000-of-00001.parquet").write_bytes(b"not parquet, and must not be read")

    assert load_dataset(parquet_data, split="dev").turn_count == 6
    with pytest.raises(DatasetError, match="No parquet files of split 'test'; found splits: dev, train"):
        load_dataset(parquet_data, split="test")


def test_a_missing_data_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_a_folder_without_magicbrush_files_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"expected edit_sessions.json .* or \*.parquet"):
        load_dataset(tmp_path)


def test_a_missing_image_is_named(folder_data: Path) -> None:
    (folder_data / "images" / "202" / "202-output2.png").unlink()

    with pytest.raises(
        DatasetError, match=r"session 202, turn 2: the output image .*202-output2.png is missing"
    ):
        load_dataset(folder_data)


def test_a_turn_without_an_instruction_is_named(folder_data: Path) -> None:
    sessions = json.loads((folder_data / "edit_sessions.json").read_text())
    del sessions["303"][1]["instruction"]
    (folder_data / "edit_sessions.json").write_text(json.dumps(sessions))

    with pytest.raises(DatasetError, match="session 303, turn 2: the turn has no 'instruction' text"):
        load_dataset(folder_data)


def test_broken_json_is_reported(folder_data: Path) -> None:
    (folder_data / "edit_sessions.json").write_text("{not json")

    with pytest.raises(DatasetError, match=r"edit_sessions\.json is not valid JSON"):
        load_dataset(folder_data)


def test_parquet_without_the_magicbrush_columns_is_reported(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"img_id": ["1"], "prompt": ["x"]}), tmp_path / "dev-00000-of-00001.parquet")

    with pytest.raises(DatasetError, match="lacks the MagicBrush column"):
        load_dataset(tmp_path)


def test_zero_limit_is_refused(folder_data: Path) -> None:
    with pytest.raises(DatasetError, match="--limit must be at least 1"):
        load_dataset(folder_data, limit=0)
