"""The database's tables: their migrations, and how their rows become records.

The tables are created by numbered sqlite-utils migrations, applied by :func:`migrate` when
:meth:`Store.open` opens the file.

sqlite-utils applies each migration once, by name, in order, and records it in the database:
a change to the schema is a new function below the others (``m002_...``), never an edit of
one that was released.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from editor.types import EditSettings
from sessions.models import Job, Version

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Record = TypeVar("_Record", bound="DataclassInstance")

MIGRATIONS = Migrations("sessions")


def migrate(db: Database) -> None:
    """Apply the migrations under one write lock: a second process opening a fresh database at the
    same moment waits (``busy_timeout``), then finds them applied, instead of applying them twice.

    Foreign keys are off while they run (SQLite ignores the pragma inside a transaction, so it is
    set here, around it): a table rebuild (``m002_steering``) checks them itself before the commit.
    """
    foreign_keys = bool(db.execute("PRAGMA foreign_keys").fetchone()[0])
    db.execute("PRAGMA foreign_keys = OFF")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS.apply(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        if foreign_keys:
            db.execute("PRAGMA foreign_keys = ON")


@MIGRATIONS()
def m001_initial_schema(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            place_key TEXT NOT NULL,
            transport TEXT NOT NULL,
            guild_id TEXT,
            channel_id TEXT NOT NULL,
            thread_id TEXT,
            created_at REAL NOT NULL
        );
        CREATE INDEX conversations_by_place ON conversations(place_key);

        CREATE TABLE versions (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            parent_id TEXT REFERENCES versions(id),
            author_id TEXT NOT NULL,
            author_name TEXT NOT NULL,
            instruction TEXT,
            caption TEXT,
            before_captions TEXT NOT NULL DEFAULT '[]',
            after_captions TEXT NOT NULL DEFAULT '[]',
            settings TEXT,
            seed INTEGER,
            image BLOB NOT NULL CHECK (length(image) > 0),
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            image_caption TEXT,
            created_at REAL NOT NULL,
            CHECK (parent_id IS NOT NULL OR instruction IS NULL)
        );
        CREATE INDEX versions_by_conversation ON versions(conversation_id);
        CREATE INDEX versions_by_parent ON versions(parent_id);

        CREATE TABLE message_links (
            transport TEXT NOT NULL,
            message_id TEXT NOT NULL,
            version_id TEXT NOT NULL REFERENCES versions(id),
            created_at REAL NOT NULL,
            PRIMARY KEY (transport, message_id)
        );

        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            requester_id TEXT NOT NULL,
            requester_name TEXT NOT NULL,
            source_version_id TEXT REFERENCES versions(id),
            kind TEXT NOT NULL CHECK (kind IN ('start', 'continue', 'retry', 'stronger', 'subtler')),
            instruction TEXT NOT NULL,
            settings TEXT NOT NULL,
            seed INTEGER NOT NULL,
            captions TEXT,
            input_image BLOB,
            input_width INTEGER,
            input_height INTEGER,
            state TEXT NOT NULL CHECK (
                state IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
            error TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            result_version_id TEXT REFERENCES versions(id),
            reply_context TEXT NOT NULL DEFAULT '{}',
            attempts INTEGER NOT NULL DEFAULT 0,
            CHECK (kind = 'start' OR source_version_id IS NOT NULL),
            CHECK (state <> 'done' OR result_version_id IS NOT NULL)
        );
        CREATE INDEX jobs_by_state ON jobs(state);

        CREATE TABLE inversions (
            version_id TEXT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            data BLOB NOT NULL,
            size INTEGER NOT NULL,
            last_used REAL NOT NULL,
            PRIMARY KEY (version_id, key)
        );
        CREATE INDEX inversions_by_use ON inversions(last_used);

        CREATE TABLE places (
            key TEXT PRIMARY KEY,
            transport TEXT NOT NULL,
            guild_id TEXT,
            channel_id TEXT NOT NULL,
            thread_id TEXT,
            settings TEXT NOT NULL DEFAULT '{}',
            options TEXT NOT NULL DEFAULT '{}'
        );
        """
    )


@MIGRATIONS(transactional=False)
def m002_steering(db: Database) -> None:
    """Issue 13: captions written by a person, deleted versions, variations and the chain mode.

    ``jobs`` is rebuilt (SQLite cannot change a CHECK) to allow the kinds ``fix`` and
    ``variations``; a variations job ends with candidates, not a version. SQLite's procedure
    for a rebuild runs with foreign keys off, which :func:`migrate` sees to; the rebuild runs
    in a savepoint of its own and checks the keys before it is kept.
    """
    with db.atomic():
        # One statement at a time: executescript() would commit first.
        for statement in _STEERING.split(";"):
            if statement.strip():
                db.execute(statement)
        problems = db.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise RuntimeError(f"m002_steering broke foreign keys: {problems[:5]}")


_JOB_COLUMNS_M001 = (
    "id, conversation_id, requester_id, requester_name, source_version_id, kind, instruction, "
    "settings, seed, captions, input_image, input_width, input_height, state, error, created_at, "
    "started_at, finished_at, result_version_id, reply_context, attempts"
)
_STEERING = f"""
    ALTER TABLE versions ADD COLUMN captions_by TEXT NOT NULL DEFAULT 'model'
        CHECK (captions_by IN ('model', 'person'));
    ALTER TABLE versions ADD COLUMN deleted_at REAL;
    ALTER TABLE versions ADD COLUMN deleted_by TEXT;

    CREATE TABLE jobs_steering (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        requester_id TEXT NOT NULL,
        requester_name TEXT NOT NULL,
        source_version_id TEXT REFERENCES versions(id),
        kind TEXT NOT NULL CHECK (
            kind IN ('start', 'continue', 'retry', 'stronger', 'subtler', 'fix', 'variations')),
        instruction TEXT NOT NULL,
        settings TEXT NOT NULL,
        seed INTEGER NOT NULL,
        captions TEXT,
        input_image BLOB,
        input_width INTEGER,
        input_height INTEGER,
        state TEXT NOT NULL CHECK (
            state IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        result_version_id TEXT REFERENCES versions(id),
        reply_context TEXT NOT NULL DEFAULT '{{}}',
        attempts INTEGER NOT NULL DEFAULT 0,
        captions_by TEXT NOT NULL DEFAULT 'model' CHECK (captions_by IN ('model', 'person')),
        chain TEXT NOT NULL DEFAULT 'reinvert' CHECK (chain IN ('reinvert', 'compose')),
        previews INTEGER NOT NULL DEFAULT 0,
        CHECK (kind = 'start' OR source_version_id IS NOT NULL),
        CHECK (state <> 'done' OR result_version_id IS NOT NULL OR kind = 'variations')
    );
    INSERT INTO jobs_steering ({_JOB_COLUMNS_M001}) SELECT {_JOB_COLUMNS_M001} FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_steering RENAME TO jobs;
    CREATE INDEX jobs_by_state ON jobs(state);

    CREATE TABLE variations (
        job_id TEXT NOT NULL REFERENCES jobs(id),
        position INTEGER NOT NULL,
        image BLOB NOT NULL CHECK (length(image) > 0),
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        settings TEXT NOT NULL,
        caption TEXT NOT NULL,
        before_captions TEXT NOT NULL,
        after_captions TEXT NOT NULL,
        version_id TEXT REFERENCES versions(id),
        PRIMARY KEY (job_id, position)
    );
"""


@MIGRATIONS()
def m003_outbox(db: Database) -> None:
    """Delivery becomes part of a job's state, and uploads are recorded before they are fetched.

    A finished job is ``delivered`` once its transport has posted the result and finished its
    status message; jobs finished before this migration were delivered by the bot that ran them.
    """
    for statement in _OUTBOX.split(";"):
        if statement.strip():
            db.execute(statement)


_OUTBOX = """
    ALTER TABLE jobs ADD COLUMN delivered_at REAL;
    UPDATE jobs SET delivered_at = coalesce(finished_at, created_at)
        WHERE state IN ('done', 'failed', 'cancelled', 'interrupted');
    CREATE INDEX jobs_undelivered ON jobs(state) WHERE delivered_at IS NULL;
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        transport TEXT NOT NULL,
        guild_id TEXT,
        channel_id TEXT NOT NULL,
        thread_id TEXT,
        requester_id TEXT NOT NULL,
        requester_name TEXT NOT NULL,
        instruction TEXT NOT NULL,
        source TEXT NOT NULL,
        reply_context TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    )
"""


@MIGRATIONS()
def m004_caption_notes(db: Database) -> None:
    """What the person should know about how an edit read its instruction (the language model
    fell back, a caption was shortened to the text encoder's limit), kept with the version."""
    db.execute("ALTER TABLE versions ADD COLUMN notes TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE variations ADD COLUMN notes TEXT NOT NULL DEFAULT '[]'")


# --- rows to records: a record's fields are its table's columns of the same names ----------


def _columns(record: type[DataclassInstance], table: str) -> str:
    """The columns named as the record's fields (a table may hold more, e.g. the image)."""
    return ", ".join(f"{table}.{field.name}" for field in dataclasses.fields(record))


def _from_row(
    record: type[_Record], row: Mapping[str, Any], readers: Mapping[str, Callable[[Any], Any]]
) -> _Record:
    """A record from its columns, each taken as it is unless ``readers`` converts it."""
    names = [field.name for field in dataclasses.fields(record)]
    return record(**{name: readers[name](row[name]) if name in readers else row[name] for name in names})


def _settings(text: str | None) -> EditSettings | None:
    return EditSettings.from_dict(json.loads(text)) if text else None


def _strings(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


#: The columns of ``versions`` and ``jobs`` stored as JSON; the others are read as they are.
_VERSION_READERS = {
    "before_captions": _strings,
    "after_captions": _strings,
    "settings": _settings,
    "notes": _strings,
}
_JOB_READERS = {"reply_context": json.loads}
#: Every column of ``versions`` but the image, which only ``image_png`` reads.
VERSION_COLUMNS = _columns(Version, "versions")
JOB_COLUMNS = _columns(Job, "jobs")


def version_from_row(row: Mapping[str, Any]) -> Version:
    return _from_row(Version, row, _VERSION_READERS)


def job_from_row(row: Mapping[str, Any]) -> Job:
    return _from_row(Job, row, _JOB_READERS)
