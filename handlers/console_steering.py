"""The console's commands for steering an edit: /fix, /delete (and their help lines).

:class:`SteeringCommands` is mixed into ``ConsoleChat``; its commands use only what
:class:`_Chat` names, so this file reads on its own.
"""

from __future__ import annotations

from typing import Protocol

from sessions import Author, EditService, Ticket, Version

HELP = """\
  /fix                      show the before/after captions, then type your own (no language model)
  /delete                   delete the current result (kept for edits made from it) and go back"""


class _Chat(Protocol):
    """What the steering commands need of the chat."""

    _service: EditService
    _author: Author

    def _say(self, text: str) -> None: ...
    def _require_current(self) -> Version: ...
    def _reply_context(self) -> dict[str, str]: ...
    def _show(self, version: Version, verb: str) -> None: ...
    async def _follow(self, ticket: Ticket) -> None: ...
    async def _ask(self, prompt: str) -> str | None: ...


class SteeringCommands:
    """``/fix`` and ``/delete`` for ``ConsoleChat``."""

    async def _fix(self: _Chat, _: str) -> bool:
        current = self._require_current()
        if current.is_original:
            self._say("This is the original image; it has no captions to fix. Edit it first.")
            return True
        self._say("Captions now (separate several with ' | '; an empty line keeps a side as it is):")
        self._say("  Before: " + " | ".join(current.before_captions))
        self._say("  After:  " + " | ".join(current.after_captions))
        before = await self._ask("Before: ")
        after = None if before is None else await self._ask("After: ")
        if before is None or after is None:
            return False  # the input ended
        ticket = self._service.fix_captions(
            current.id,
            self._author,
            before.split("|") if before.strip() else list(current.before_captions),
            after.split("|") if after.strip() else list(current.after_captions),
            reply_context=self._reply_context(),
        )
        await self._follow(ticket)
        return True

    async def _delete(self: _Chat, _: str) -> bool:
        current = self._require_current()
        self._service.delete_version(current.id, self._author)
        self._show(self._service.undo(current.id), f"Deleted {current.id}; back to")
        return True
