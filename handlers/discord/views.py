"""Buttons and the instruction modal.

Buttons are ``DynamicItem``s: the version or job id lives in the button's ``custom_id``, and
the classes are registered with ``add_dynamic_items`` at start-up, so a button on a message
posted before a restart still works. They only parse the id and hand over to the bot's
relay, which they know only as the :class:`ViewActions` they need (``flows.Relay`` is one).
"""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

import discord

from handlers.discord.errors import report
from sessions import Version

PREFIX = "otf"
#: Discord refuses a modal whose text input allows more than this many characters.
MAX_TEXT_INPUT = 4000
_ID = r"[A-Za-z0-9_-]{1,64}"
ACTIONS = {
    # action: (label, style)
    "undo": ("Undo", discord.ButtonStyle.secondary),
    "retry": ("Retry", discord.ButtonStyle.primary),
    "stronger": ("Stronger", discord.ButtonStyle.secondary),
    "subtler": ("Subtler", discord.ButtonStyle.secondary),
    "captions": ("Captions", discord.ButtonStyle.secondary),
    "fix": ("Fix captions", discord.ButtonStyle.secondary),
    "variations": ("Variations", discord.ButtonStyle.secondary),
    "delete": ("Delete", discord.ButtonStyle.danger),
}


class ViewActions(Protocol):
    """What the buttons and the modal hand their interaction over to."""

    async def button(self, interaction: discord.Interaction, action: str, version_id: str) -> None: ...

    async def cancel(self, interaction: discord.Interaction, job_id: str) -> None: ...

    async def edit_from_modal(
        self, interaction: discord.Interaction, target: discord.Message, text: str
    ) -> None: ...

    async def fix_from_modal(
        self, interaction: discord.Interaction, version_id: str, before: str, after: str
    ) -> None: ...

    async def pick(self, interaction: discord.Interaction, job_id: str, number: int) -> None: ...


@runtime_checkable
class RelayingClient(Protocol):
    """A client that carries the relay the views hand over to (``bot.EditBot``)."""

    relay: ViewActions


def _relay(interaction: discord.Interaction) -> ViewActions:
    client = interaction.client
    if not isinstance(client, RelayingClient):
        raise TypeError(f"{type(client).__name__} has no relay for the buttons and the modal")
    return client.relay


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=re.compile(rf"{PREFIX}:(?P<action>{'|'.join(ACTIONS)}):(?P<version_id>{_ID})"),
):
    """One of the buttons of :data:`ACTIONS` on a result, for the version it shows."""

    def __init__(self, action: str, version_id: str) -> None:
        label, style = ACTIONS[action]
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=label, style=style, custom_id=f"{PREFIX}:{action}:{version_id}"
        )
        super().__init__(button)
        self.action = action
        self.version_id = version_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ResultButton:
        return cls(match["action"], match["version_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _relay(interaction).button(interaction, self.action, self.version_id)
        except Exception as error:
            await report(interaction, error)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=re.compile(rf"{PREFIX}:cancel:(?P<job_id>{_ID})"),
):
    """Cancel on a status message, for the requester and for moderators (Manage Messages)."""

    def __init__(self, job_id: str) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label="Cancel", style=discord.ButtonStyle.danger, custom_id=f"{PREFIX}:cancel:{job_id}"
        )
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CancelButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _relay(interaction).cancel(interaction, self.job_id)
        except Exception as error:
            await report(interaction, error)


class PickButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=re.compile(rf"{PREFIX}:pick:(?P<job_id>{_ID}):(?P<number>[1-9])"),
):
    """Button n under a grid of variations: make variation n a version of the conversation."""

    def __init__(self, job_id: str, number: int) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=str(number), style=discord.ButtonStyle.primary, custom_id=f"{PREFIX}:pick:{job_id}:{number}"
        )
        super().__init__(button)
        self.job_id = job_id
        self.number = number

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> PickButton:
        return cls(match["job_id"], int(match["number"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _relay(interaction).pick(interaction, self.job_id, self.number)
        except Exception as error:
            await report(interaction, error)


def pick_view(job_id: str, count: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for number in range(1, count + 1):
        view.add_item(PickButton(job_id, number))
    return view


def result_view(version: Version) -> discord.ui.View | None:
    """The buttons under a shown version: edits have all of them; an original has none to offer."""
    if version.is_original:
        return None
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(ResultButton(action, version.id))
    return view


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


class InstructionModal(discord.ui.Modal, title="Edit image"):
    """Asks for the instruction after the "Edit image" message menu."""

    def __init__(self, target: discord.Message, max_chars: int) -> None:
        super().__init__(timeout=600)
        self.target = target
        self.instruction: discord.ui.TextInput[InstructionModal] = discord.ui.TextInput(
            label="What should change?",
            placeholder="e.g. make it snowy, turn the cat into a dog",
            min_length=1,
            max_length=min(max_chars, MAX_TEXT_INPUT),
        )
        self.add_item(self.instruction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await _relay(interaction).edit_from_modal(interaction, self.target, self.instruction.value)

    # Modal.on_error's own signature (discord.py's Modal drops the ``item`` of BaseView.on_error).
    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        await report(interaction, error)


def _prefill(lines: tuple[str, ...]) -> str:
    """Captions one per line, as many whole lines as a text input holds."""
    text = ""
    for line in lines:
        candidate = f"{text}\n{line}" if text else line
        if len(candidate) > MAX_TEXT_INPUT:
            break
        text = candidate
    return text


class FixCaptionsModal(discord.ui.Modal, title="Fix how the edit was understood"):
    """The before and after captions of a result, one per line, to correct and re-run."""

    def __init__(self, version: Version) -> None:
        super().__init__(timeout=600)
        self.version_id = version.id
        self.before: discord.ui.TextInput[FixCaptionsModal] = discord.ui.TextInput(
            label="Before: the image now (one per line)",
            style=discord.TextStyle.paragraph,
            default=_prefill(version.before_captions),
            max_length=MAX_TEXT_INPUT,
        )
        self.after: discord.ui.TextInput[FixCaptionsModal] = discord.ui.TextInput(
            label="After: the image edited (one per line)",
            style=discord.TextStyle.paragraph,
            default=_prefill(version.after_captions),
            max_length=MAX_TEXT_INPUT,
        )
        self.add_item(self.before)
        self.add_item(self.after)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await _relay(interaction).fix_from_modal(
            interaction, self.version_id, self.before.value, self.after.value
        )

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        await report(interaction, error)
