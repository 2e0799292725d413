"""The SQLite store on real files: schema and migrations, atomic writes, the caches."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from PIL import Image
from sqlite_utils import Database

from editor.types import EditSettings
from sessions.config import ConsoleConfig, StorageConfig, load_config
from sessions.models import Author, Place
from sessions.records import EditOutcome
from sessions.schema import MIGRATIONS
from sessions.store import StorageUnavailable, Store
from tests.support.db_checks import database_problems

ANN = Author("1", "Ann")
BOB = Author("2", "Bob")
PLACE = Place("discord", 10, 20, 30)


def png(colour: tuple[int, int, int] = (200, 10, 10), size: tuple[int, int] = (16, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def outcome(caption: str = "a red square", inversion: bytes | None = b"inv" * 10) -> EditOutcome:
    return EditOutcome(
        image_png=png((0, 0, 200)),
        width=16,
        height=8,
        caption=caption,
        before_captions=("a red square",),
        after_captions=("a blue square",),
        inversion=inversion,
        inversion_key="k",
    )


def start_job(store: Store, instruction: str = "make it blue") -> str:
    job = store.add_job(
        kind="start",
        place=PLACE,
        requester=ANN,
        instruction=instruction,
        settings=EditSettings(),
        seed=7,
        input_png=png(),
        input_size=(16, 8),
        reply_context={"channel": 20},
    )
    return job.id


def continue_job(store: Store, source_id: str, author: Author = BOB) -> str:
    return store.add_job(
        kind="continue",
        source_version_id=source_id,
        requester=author,
        instruction="add a hat",
        settings=EditSettings(steps=10),
        seed=8,
        reply_context={},
    ).id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(tmp_path / "var" / "bot.db", inversion_cache_bytes=10_000)
    yield opened
    opened.close()


def test_opening_twice_applies_the_migrations_once_and_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    first = Store.open(path)
    job_id = start_job(first)
    first.close()
    second = Store.open(path)
    try:
        applied = [m.name for m in MIGRATIONS.applied(second.db)]
        assert applied[0] == "m001_initial_schema"
        assert len(applied) == len(set(applied))
        assert MIGRATIONS.pending(second.db) == []
        assert second.get_job(job_id) is not None
        assert second.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert second.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert second.db.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
        tables = set(second.db.table_names())
        assert {"conversations", "versions", "message_links", "jobs", "inversions", "places"} <= tables
    finally:
        second.close()


def test_a_read_only_store_reads_what_was_written_and_can_write_nothing(store: Store, tmp_path: Path) -> None:
    version = store.record_result(start_job(store), outcome())
    reader = Store.open(tmp_path / "var" / "bot.db", read_only=True)
    try:
        assert reader.get_version(version.id) == version
        assert reader.image_png(version.id) == store.image_png(version.id)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.mark_deleted(version.id, ANN.id)
    finally:
        reader.close()
    with pytest.raises(StorageUnavailable, match="unable to open"):
        Store.open(tmp_path / "nothing.db", read_only=True)  # a reader creates nothing
    assert not (tmp_path / "nothing.db").exists()


def test_a_finished_start_job_records_the_original_and_the_edit(store: Store) -> None:
    job_id = start_job(store)
    store.mark_running(job_id)
    version = store.record_result(job_id, outcome())

    original = store.get_version(version.parent_id)
    assert original is not None
    assert original.is_original
    assert original.instruction is None
    assert original.image_caption == "a red square"
    assert store.image_png(original.id) == png()
    assert version.instruction == "make it blue"
    assert version.caption == "a red square"
    assert version.after_captions == ("a blue square",)
    assert version.settings == EditSettings()
    assert version.seed == 7
    assert (version.width, version.height) == (16, 8)
    job = store.get_job(job_id)
    assert job is not None
    assert job.state == "done"
    assert job.result_version_id == version.id
    assert job.source_version_id == original.id
    assert job.attempts == 1
    assert job.reply_context == {"channel": 20}
    assert store.db.execute("SELECT input_image FROM jobs").fetchone()[0] is None
    assert store.inversions.get(original.id, "k") == b"inv" * 10
    assert store.conversation_place(version.conversation_id) == PLACE
    assert database_problems(store) == []


def test_lineage_runs_from_the_root_and_branches_share_a_parent(store: Store) -> None:
    first = store.record_result(start_job(store), outcome())
    left = store.record_result(continue_job(store, first.id), outcome("a blue square"))
    right = store.record_result(continue_job(store, first.id), outcome("a blue square"))
    deeper = store.record_result(continue_job(store, left.id), outcome("a hat"))

    assert [v.id for v in store.lineage(deeper.id)] == [first.parent_id, first.id, left.id, deeper.id]
    assert left.parent_id == right.parent_id == first.id
    assert [v.id for v in store.conversation_versions(first.conversation_id)] == [
        first.parent_id,
        first.id,
        left.id,
        right.id,
        deeper.id,
    ]
    assert store.lineage("missing") == []
    source = store.get_version(first.id)
    assert source is not None
    assert source.image_caption == "a blue square"


def test_a_failure_mid_transaction_leaves_no_image_and_no_version(store: Store) -> None:
    job_id = start_job(store)
    store.mark_running(job_id)
    # A real failure inside the transaction, after both versions were inserted.
    store.db.execute(
        "CREATE TRIGGER fail_cache BEFORE INSERT ON inversions BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        store.record_result(job_id, outcome())

    assert store.db.execute("SELECT count(*) FROM versions").fetchone()[0] == 0
    job = store.get_job(job_id)
    assert job is not None
    assert job.state == "running"
    assert store.job_spec(job_id).image_png == png()
    assert database_problems(store) == []


def test_the_schema_refuses_a_version_without_its_image(store: Store) -> None:
    store.record_result(start_job(store), outcome())
    conversation_id = store.db.execute("SELECT id FROM conversations").fetchone()[0]
    for image in (None, b""):
        with pytest.raises(sqlite3.IntegrityError):
            store.db["versions"].insert(
                {
                    "id": "orphan",
                    "conversation_id": conversation_id,
                    "author_id": "1",
                    "author_name": "Ann",
                    "image": image,
                    "width": 1,
                    "height": 1,
                    "created_at": 0.0,
                }
            )


def test_inversions_are_evicted_least_recently_used_first_to_the_budget(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "bot.db", inversion_cache_bytes=250)
    first, second, third = (
        store.record_result(start_job(store), outcome(inversion=cached)).parent_id
        for cached in (b"1" * 100, b"2" * 100, None)
    )
    assert store.inversions.get(first, "k") == b"1" * 100  # now the most recently used
    store.record_result(continue_job(store, third), outcome(inversion=b"3" * 100))  # caches the third's

    assert store.inversions.get(second, "k") is None
    assert store.inversions.get(first, "k") == b"1" * 100
    assert store.inversions.get(third, "k") == b"3" * 100
    assert store.inversions.size() == 200
    store.record_result(continue_job(store, second), outcome(inversion=b"x" * 300))  # over the whole budget
    assert store.inversions.get(second, "k") is None
    assert store.inversions.size() == 200  # the others stay
    store.close()


def test_requeue_refunds_an_attempt_only_after_a_shutdown(store: Store) -> None:
    job_id = start_job(store)
    store.mark_running(job_id)
    store.requeue(job_id, refund_attempt=True)
    job = store.get_job(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.started_at) == ("queued", 0, None)
    store.mark_running(job_id)
    store.requeue(job_id, refund_attempt=False)
    job = store.get_job(job_id)
    assert job is not None
    assert (job.state, job.attempts) == ("queued", 1)
    assert [j.id for j in store.unfinished_jobs()] == [job_id]


def test_a_failed_start_keeps_its_upload_and_a_cancelled_one_drops_it(store: Store) -> None:
    failed, cancelled = start_job(store, "one"), start_job(store, "two")
    assert (
        store.finish_job(failed, "failed", "The GPU ran out of memory.").error == "The GPU ran out of memory."
    )
    assert store.finish_job(cancelled, "cancelled").state == "cancelled"
    images = dict(store.db.execute("SELECT id, input_image IS NOT NULL FROM jobs").fetchall())
    assert images == {failed: 1, cancelled: 0}
    assert store.unfinished_jobs() == []
    with pytest.raises(ValueError, match="failures and cancels"):
        store.finish_job(failed, "done")


def test_discarding_a_refused_start_job_removes_its_conversation(store: Store) -> None:
    job_id = start_job(store)
    store.discard_job(job_id)
    assert store.db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM conversations").fetchone()[0] == 0


def test_messages_link_to_versions_and_places_keep_settings_and_options(store: Store) -> None:
    version = store.record_result(start_job(store), outcome())
    store.link_message("discord", "111", version.id)
    store.link_message("discord", "112", version.id)
    assert store.version_for_message("discord", "112") == version
    assert store.version_for_message("console", "112") is None
    with pytest.raises(sqlite3.IntegrityError):
        store.link_message("discord", "113", "no-such-version")

    assert store.place_settings(PLACE) == {}
    assert store.update_place(PLACE, "settings", {"steps": 20, "guidance_scale": 7.5}) == {
        "steps": 20,
        "guidance_scale": 7.5,
    }
    assert store.update_place(PLACE, "settings", {"steps": None}) == {"guidance_scale": 7.5}
    store.update_place(PLACE, "options", {"edit_channel": True})
    assert store.place_options(PLACE) == {"edit_channel": True}
    assert store.place_settings(Place("discord", 10, 20)) == {}  # another place


def test_statistics_count_jobs_by_state(store: Store) -> None:
    done = start_job(store)
    store.mark_running(done)
    store.record_result(done, outcome())
    start_job(store)
    assert store.job_counts() == {"done": 1, "queued": 1}


def test_an_in_memory_store_works_for_quick_checks() -> None:
    store = Store.open(":memory:")
    version = store.record_result(start_job(store), outcome())
    assert store.get_version(version.id) == version
    store.close()


def test_the_storage_section_resolves_paths_next_to_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("storage:\n  inversion_cache_mb: 1.5\n", encoding="utf-8")
    storage = load_config(config).storage
    assert storage.database_path == tmp_path / "var" / "bot.db"
    assert storage.outputs_path == tmp_path / "outputs"
    assert storage.inversion_cache_bytes == 1_572_864


def test_the_shipped_config_states_the_defaults() -> None:
    repo = Path(__file__).resolve().parent.parent
    config = load_config(repo / "config.yaml")
    assert config.storage == StorageConfig(base_dir=str(repo))
    assert config.console == ConsoleConfig()


def test_jobs_finished_before_the_outbox_existed_count_as_delivered(tmp_path: Path) -> None:
    """m002 must not make the first start after an upgrade post every old result again."""
    path = tmp_path / "bot.db"
    connection = sqlite3.connect(path)
    old = Store(Database(connection), 10_000)
    MIGRATIONS.apply(old.db, stop_before="m003_outbox")
    old.db.execute("INSERT INTO conversations VALUES ('c', 'k', 'discord', '10', '20', NULL, 0)")
    for job_id, state in (("j1", "failed"), ("j2", "queued")):
        old.db.execute(
            "INSERT INTO jobs (id, conversation_id, requester_id, requester_name, kind, instruction, "
            "settings, seed, state, created_at, input_image) "
            "VALUES (?, 'c', '1', 'Ann', 'start', 'x', '{}', 1, ?, 0, x'00')",
            [job_id, state],
        )
    connection.commit()
    connection.close()

    store = Store.open(path)
    assert store.get_job("j1").delivered_at is not None
    assert store.get_job("j2").delivered_at is None
    assert store.undelivered_jobs() == []
    store.finish_job("j2", "failed", "boom")
    assert [job.id for job in store.undelivered_jobs()] == ["j2"]
    store.mark_delivered("j2")
    assert store.undelivered_jobs() == []
    store.close()


def test_an_upload_leaves_in_the_transaction_that_records_its_job(store: Store) -> None:
    upload = store.uploads.add(
        "u1", PLACE, ANN, "make it blue", source="https://cdn/x.png", reply_context={"channel_id": "20"}
    )
    assert store.uploads.all() == [upload]
    assert upload.place == PLACE
    assert upload.reply_context == {"channel_id": "20"}
    job = store.add_job(
        kind="start",
        place=PLACE,
        requester=ANN,
        instruction="make it blue",
        settings=EditSettings(),
        seed=7,
        input_png=png(),
        input_size=(16, 8),
        reply_context={},
        upload_id=upload.id,
    )
    assert store.uploads.all() == []
    assert (job.id, job.state) == ("u1", "queued")
    other = store.uploads.add("u2", PLACE, BOB, "add a hat", source="https://cdn/y.png", reply_context={})
    store.uploads.delete(other.id)
    assert store.uploads.all() == []
