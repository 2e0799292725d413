"""Plain values the conversation service hands to transports (frozen, comparable, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from editor.types import EditSettings

JobKind = Literal["start", "continue", "retry", "stronger", "subtler", "fix", "variations"]
#: Who wrote a version's before/after captions: the language model, or a person (Fix captions).
CaptionsBy = Literal["model", "person"]
#: How a turn of a conversation is made (see ``EditService``): from the previous result's own
#: inversion, or as the lineage's directions summed on the conversation's first inversion.
ChainMode = Literal["reinvert", "compose"]
CHAIN_MODES: tuple[ChainMode, ...] = ("reinvert", "compose")
JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]

#: States after which a job changes no more.
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled", "interrupted"})


def _text_id(value: object) -> str | None:
    """Transport ids arrive as ints (Discord snowflakes) or strings; store them one way."""
    return None if value is None else str(value)


@dataclass(frozen=True)
class Place:
    """Where a conversation lives: a Discord channel or thread, or a named console session."""

    transport: str
    guild_id: str | None
    channel_id: str
    thread_id: str | None = None

    def __post_init__(self) -> None:
        # Normalise in place so Place("discord", 1, 2) == Place("discord", "1", "2").
        object.__setattr__(self, "guild_id", _text_id(self.guild_id))
        object.__setattr__(self, "channel_id", str(self.channel_id))
        object.__setattr__(self, "thread_id", _text_id(self.thread_id))

    @classmethod
    def console(cls, session: str) -> Place:
        return cls(transport="console", guild_id=None, channel_id=session)

    @property
    def parent(self) -> Place | None:
        """The channel a thread lives in (whose settings the thread inherits); None otherwise."""
        return None if self.thread_id is None else replace(self, thread_id=None)

    def shares_scope(self, other: Place) -> bool:
        """Whether a request made in ``other`` may use this place's versions: the same server,
        or for a private chat (no server), the same chat."""
        return (
            self.transport == other.transport
            and self.guild_id == other.guild_id
            and (self.guild_id is not None or self.channel_id == other.channel_id)
        )

    @property
    def key(self) -> str:
        """One string naming the place, for the places table's primary key."""
        return "/".join([self.transport, self.guild_id or "-", self.channel_id, self.thread_id or "-"])


@dataclass(frozen=True)
class Author:
    id: str
    name: str
    is_moderator: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", str(self.id))


@dataclass(frozen=True)
class Version:
    """One image in a conversation's edit tree.

    The original upload is a root (``parent_id`` None, no instruction, settings or seed).
    Every other version is the result of editing its parent: ``caption`` is BLIP's caption
    of the parent (the input of that edit), ``before_captions``/``after_captions`` are how
    the language model read the instruction. ``image_caption`` is BLIP's caption of this
    version's own image, known once something was edited from it.
    """

    id: str
    conversation_id: str
    parent_id: str | None
    author_id: str
    author_name: str
    instruction: str | None
    caption: str | None
    before_captions: tuple[str, ...]
    after_captions: tuple[str, ...]
    settings: EditSettings | None
    seed: int | None
    width: int
    height: int
    created_at: float
    image_caption: str | None = None
    captions_by: CaptionsBy = "model"
    #: When the version's message was deleted; it stays in the tree for its descendants.
    deleted_at: float | None = None
    #: What the person should know about how the edit read its instruction, in plain words
    #: (the language model's captions were a fallback, a caption was shortened).
    notes: tuple[str, ...] = ()

    @property
    def is_original(self) -> bool:
        return self.parent_id is None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True)
class Job:
    """One requested edit and what became of it; times are Unix seconds."""

    id: str
    conversation_id: str
    requester_id: str
    source_version_id: str | None
    kind: JobKind
    instruction: str
    state: JobState
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    result_version_id: str | None
    reply_context: dict[str, Any] = field(default_factory=dict, hash=False)
    requester_name: str = ""
    attempts: int = 0
    #: When its transport posted the outcome and finished its status (None: not yet).
    delivered_at: float | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class Upload:
    """A new conversation asked for whose image is still being fetched.

    It is recorded before the download starts, so a crash meanwhile loses nothing: the next
    start fetches it again from ``source`` (or tells the person why it can't).
    """

    id: str
    place: Place
    requester: Author
    instruction: str
    #: Where the transport can fetch the image again (an attachment URL).
    source: str
    reply_context: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Variation:
    """One of the alternatives of a variations job: its own language-model sample and strength."""

    number: int
    seed: int
    settings: EditSettings
    caption: str
    before_captions: tuple[str, ...]
    after_captions: tuple[str, ...]
    width: int
    height: int
    #: The version it became once someone picked it; None until then.
    version_id: str | None = None
    #: As :attr:`Version.notes`.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariationSet:
    """What a variations job made: alternatives of one edit of ``source_version_id``, numbered 1..K."""

    job_id: str
    conversation_id: str
    source_version_id: str
    instruction: str
    requester_id: str
    variations: tuple[Variation, ...]
