"""The console's commands for steering an edit: /fix, /variations, /pick, /delete (and help).

:class:`SteeringCommands` is mixed into ``ConsoleChat``; its commands use only what
:class:`_Chat` names, so this file reads on its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol, TextIO

from sessions import CHAIN_MODES, Author, EditService, Place, Ticket, VariationSet, Version

HELP = """\
  /fix                      show the before/after captions, then type your own (no language model)
  /variations               4 alternatives of the last edit, written as one numbered grid
  /pick N                   keep alternative N of the last /variations as the current image
  /delete                   delete the current result (kept for edits made from it) and go back
  /chain reinvert|compose   how the next turns are made: from the last result, or as every
                            turn's direction on the first image (no drift over long chains)"""


class _Chat(Protocol):
    """What the steering commands need of the chat."""

    _service: EditService
    _author: Author
    _place: Place
    _outputs: Path
    _variations_job: str | None

    def _say(self, text: str) -> None: ...
    def _require_current(self) -> Version: ...
    def _reply_context(self) -> dict[str, str]: ...
    async def _show(self, version: Version, verb: str) -> None: ...
    async def _follow(self, ticket: Ticket[Any]) -> None: ...
    async def _ask(self, prompt: str) -> str | None: ...

    _lines: asyncio.Queue[str | Exception | None] | None
    _stdin: TextIO
    _stdout: TextIO


class SteeringCommands:
    """``/fix``, ``/variations``, ``/pick``, ``/delete`` and ``/chain`` for ``ConsoleChat``."""

    #: The variations job /pick picks from: the last one shown in this chat.
    _variations_job: str | None = None

    async def _ask(self: _Chat, prompt: str) -> str | None:
        """The next line typed, after ``prompt``; None once the input has ended."""
        assert self._lines is not None, "asked outside run()"
        self._stdout.write(prompt)
        self._stdout.flush()
        line = await self._lines.get()
        if not isinstance(line, str):
            await self._lines.put(line)  # the end (or the error) is also for run() to see
            return None
        self._stdout.write("\n" if not self._stdin.isatty() else "")
        return line.rstrip("\n")

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
        ticket = await self._service.fix_captions(
            current.id,
            self._author,
            before.split("|") if before.strip() else list(current.before_captions),
            after.split("|") if after.strip() else list(current.after_captions),
            place=self._place,
            reply_context=self._reply_context(),
        )
        await self._follow(ticket)
        return True

    async def _delete(self: _Chat, _: str) -> bool:
        current = self._require_current()
        await self._service.delete_version(current.id, self._author, place=self._place)
        await self._show(self._service.undo(current.id, place=self._place), f"Deleted {current.id}; back to")
        return True

    async def _variations(self: _Chat, _: str) -> bool:
        current = self._require_current()
        await self._follow(
            await self._service.variations(
                current.id, self._author, place=self._place, reply_context=self._reply_context()
            )
        )
        return True

    async def _show_variations(self: _Chat, made: VariationSet) -> None:
        """Write the grid, list what each alternative is, remember the job for /pick."""
        self._variations_job = made.job_id
        path = self._outputs / f"variations-{made.job_id}.png"
        self._outputs.mkdir(parents=True, exist_ok=True)
        path.write_bytes(await self._service.variation_grid(made.job_id, place=self._place))
        self._say(f"Variations of “{made.instruction}”: {path}")
        for variation in made.variations:
            after = variation.after_captions[0] if variation.after_captions else ""
            self._say(f"  {variation.number}. strength {variation.settings.direction_strength:g}: {after}")
        for note in dict.fromkeys(text for variation in made.variations for text in variation.notes):
            self._say(f"  Note: {note}")
        self._say("Type /pick N to keep one.")

    async def _pick(self: _Chat, argument: str) -> bool:
        if self._variations_job is None:
            self._say("There are no variations to pick from yet; type /variations first.")
            return True
        if not argument.strip().isdigit():
            self._say("Please say which one, e.g. /pick 2.")
            return True
        version = await self._service.pick_variation(
            self._variations_job, int(argument), self._author, place=self._place
        )
        await self._show(version, "Picked")
        return True

    def _write_preview(self: _Chat, job_id: str, png: bytes) -> Path:
        """The edit forming, written over the job's previous preview."""
        path = self._outputs / f"preview-{job_id}.png"
        self._outputs.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return path

    async def _chain(self: _Chat, argument: str) -> bool:
        mode = argument.strip().lower()
        if mode not in CHAIN_MODES:
            current = self._service.channel_policy(self._place).chain
            self._say(f"Chain mode is {current}. Say /chain {' or /chain '.join(CHAIN_MODES)}.")
            return True
        await self._service.update_channel_policy(self._place, chain=mode)
        self._say(f"Chain mode is now {mode}.")
        return True
