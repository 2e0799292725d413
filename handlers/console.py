"""A chat in the terminal over the conversation service: the bot without Discord.

Lines are instructions or ``/commands``; every result is written to the output folder
as ``<version id>.png`` and its path printed. The conversation lives in the database like
any other (place: transport ``console``, channel = the session name), and the current
version is remembered there, so reopening the same session continues where it was.
Reading from a pipe works: a script can drive it, and end of input ends the chat.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from handlers.console_lines import describe, progress_line, progress_mark
from handlers.console_steering import HELP as STEERING_HELP
from handlers.console_steering import SteeringCommands
from sessions import (
    Author,
    EditCancelled,
    EditService,
    Place,
    Postponed,
    Ticket,
    UserError,
    VariationSet,
    Version,
)

log = logging.getLogger(__name__)

HELP = f"""\
Type an instruction (e.g. "make it snowy") to edit the current image, or a command:
  /load PATH [instruction]  start from an image file (quote paths with spaces)
  /undo                     go back to the image this one was edited from
  /retry                    redo the last edit with a new seed
  /stronger, /subtler       the same edit, pushed further or held back
  /captions                 how the instruction was read (BLIP and before/after captions)
{STEERING_HELP}
  /history                  write a contact sheet of how this image came about
  /versions                 the tree of this conversation (* marks the current image)
  /goto ID                  make another version the current one
  /help                     this text
  /quit                     leave (so does the end of input)"""

#: A progress line is printed at each new stage and each quarter of a stage.
CURRENT = "current_version"


class ConsoleChat(SteeringCommands):
    """One console session: reads lines, runs edits one at a time, prints what happened."""

    def __init__(
        self,
        service: EditService,
        *,
        session: str,
        author: Author,
        outputs: Path,
        stdin: TextIO,
        stdout: TextIO,
        previews: bool = True,
    ) -> None:
        self._service = service
        self._previews = previews
        self._place = Place.console(session)
        self._author = author
        self._outputs = outputs
        self._stdin = stdin
        self._stdout = stdout
        self._loaded: tuple[Path, bytes] | None = None
        self._recovered: list[Ticket] = []
        self._lines: asyncio.Queue[str | Exception | None] | None = None
        self._commands: dict[str, Callable[[str], Awaitable[bool]]] = {
            "load": self._load,
            "undo": self._undo,
            "retry": self._retry,
            "stronger": self._stronger,
            "subtler": self._subtler,
            "captions": self._captions,
            "fix": self._fix,
            "delete": self._delete,
            "variations": self._variations,
            "pick": self._pick,
            "chain": self._chain,
            "history": self._history,
            "versions": self._versions,
            "goto": self._goto,
            "help": self._help,
            "quit": self._quit,
            "exit": self._quit,
        }

    async def on_recovered(self, ticket: Ticket) -> None:
        """Service listener: an edit of this session survived a restart; report it when chatting."""
        if ticket.job.reply_context.get("console") == self._place.channel_id:
            self._recovered.append(ticket)

    async def run(self) -> None:
        """Chat until /quit or the end of input."""
        lines = self._lines = self._read_lines()
        self._say("Pix2Pix-OnTheFly console. Type /help for commands.")
        if self._service.channel_policy(self._place).previews != self._previews:
            await self._service.update_channel_policy(self._place, previews=self._previews)
        for ticket in self._recovered:
            self._say(f"Finishing “{ticket.job.instruction}”, started before the restart…")
            await self._follow(ticket)
        if (current := self._current()) is not None:
            self._say(f"Continuing with version {current.id} ({describe(current)}).")
        while True:
            if self._stdin.isatty():
                self._stdout.write("> ")
                self._stdout.flush()
            line = await lines.get()
            if line is None:
                return
            if isinstance(line, Exception):
                self._say(f"Sorry: I can't read the input any more ({line}), so the chat ends here.")
                return
            if not line.strip():
                continue
            try:
                keep_going = await self._handle(line.strip())
            except UserError as error:
                self._say(f"Sorry: {error}")
                keep_going = True
            except Exception:  # a bug or a broken disk: log it, keep the chat going
                log.exception("console command %r failed", line.strip())
                self._say("Sorry: something went wrong with that. It was logged; please try again.")
                keep_going = True
            if not keep_going:
                return

    # --- input ----------------------------------------------------------------------

    def _read_lines(self) -> asyncio.Queue[str | Exception | None]:
        """Lines from a daemon thread: a blocked read never holds up shutdown (Ctrl-C).

        The queue ends with None (end of input), after an exception if reading failed
        (bytes that are not text, a closed stream), so the chat never waits for a dead reader.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Exception | None] = asyncio.Queue()

        def post(item: str | Exception | None) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the chat ended and its loop closed while this thread read on
                return False
            return True

        def read() -> None:
            try:
                for line in iter(self._stdin.readline, ""):
                    if not post(line):
                        return
            except (OSError, ValueError) as error:
                post(error)
            post(None)

        threading.Thread(target=read, name="console-input", daemon=True).start()
        return queue

    async def _handle(self, line: str) -> bool:
        if not line.startswith("/"):
            await self._edit(line)
            return True
        name, _, rest = line[1:].partition(" ")
        command = self._commands.get(name.lower())
        if command is None:
            self._say(f"I don't know the command /{name}. Type /help to see what I understand.")
            return True
        return await command(rest.strip())

    # --- commands --------------------------------------------------------------------

    async def _edit(self, instruction: str) -> bool:
        if self._loaded is not None:
            path, image = self._loaded
            self._loaded = None
            self._say(f"Editing {path.name}: “{instruction}”")
            await self._follow(
                await self._service.start_edit(
                    self._place, self._author, image, instruction, reply_context=self._reply_context()
                )
            )
            return True
        current = self._require_current()
        await self._follow(
            await self._service.continue_edit(
                current.id, self._author, instruction, place=self._place, reply_context=self._reply_context()
            )
        )
        return True

    async def _load(self, argument: str) -> bool:
        try:
            words = shlex.split(argument)
        except ValueError:
            self._say("I couldn't read that path; check the quotes around it.")
            return True
        if not words:
            self._say("Please say which image to load, e.g. /load photos/cat.jpg")
            return True
        loaded = await asyncio.to_thread(_read_file, words[0])
        if isinstance(loaded, str):
            self._say(loaded)
            return True
        self._loaded = loaded
        if len(words) > 1:
            return await self._edit(" ".join(words[1:]))
        self._say(f"Loaded {loaded[0].name}. Now type what to change, e.g. “make it snowy”.")
        return True

    async def _undo(self, _: str) -> bool:
        await self._show(self._service.undo(self._require_current().id, place=self._place), "Back to")
        return True

    async def _retry(self, _: str) -> bool:
        current = self._require_current()
        await self._follow(
            await self._service.retry(
                current.id, self._author, place=self._place, reply_context=self._reply_context()
            )
        )
        return True

    async def _stronger(self, _: str) -> bool:
        current = self._require_current()
        await self._follow(
            await self._service.stronger(
                current.id, self._author, place=self._place, reply_context=self._reply_context()
            )
        )
        return True

    async def _subtler(self, _: str) -> bool:
        current = self._require_current()
        await self._follow(
            await self._service.subtler(
                current.id, self._author, place=self._place, reply_context=self._reply_context()
            )
        )
        return True

    async def _captions(self, _: str) -> bool:
        current = self._require_current()
        if current.is_original:
            known = current.image_caption or "not known yet (it is captioned when first edited)"
            self._say(f"Version {current.id} is the original image. BLIP's caption: {known}")
            return True
        self._say(f"Version {current.id}: {describe(current)}")
        self._say(f"  BLIP saw the input as: {current.caption}")
        self._say("  Before: " + " | ".join(current.before_captions))
        self._say("  After:  " + " | ".join(current.after_captions))
        return True

    async def _history(self, _: str) -> bool:
        current = self._require_current()
        sheet = await self._service.contact_sheet(current.id, place=self._place)
        path = self._outputs / f"history-{current.id}.png"
        self._outputs.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sheet)
        steps = len(self._service.history(current.id, place=self._place))
        self._say(f"Contact sheet of {steps} step{'s' if steps != 1 else ''}: {path}")
        return True

    async def _versions(self, _: str) -> bool:
        current = self._require_current()
        versions = self._service.conversation_versions(current.conversation_id)
        children: dict[str | None, list[Version]] = {}
        for version in versions:
            children.setdefault(version.parent_id, []).append(version)

        def walk(version: Version, depth: int) -> None:
            marker = "*" if version.id == current.id else " "
            self._say(f"{marker} {'  ' * depth}{version.id}  {describe(version)}")
            for child in children.get(version.id, []):
                walk(child, depth + 1)

        for root in children.get(None, []):
            walk(root, 0)
        return True

    async def _goto(self, argument: str) -> bool:
        if not argument:
            self._say("Please give a version id, e.g. /goto 7hk2mq9x3a (see /versions).")
            return True
        await self._show(
            self._service.get_version(argument.split(maxsplit=1)[0], place=self._place), "Now at"
        )
        return True

    async def _help(self, _: str) -> bool:
        self._say(HELP)
        return True

    async def _quit(self, _: str) -> bool:
        self._say("Bye.")
        return False

    # --- helpers ----------------------------------------------------------------------

    async def _follow(self, ticket: Ticket[Any]) -> None:
        """Print progress until the job ends, then its outcome (then the job is delivered)."""
        self._say(f"Job {ticket.job_id} queued.")
        last: tuple[str | None, int] | None = None
        preview: bytes | None = None
        async for update in ticket.progress():
            mark = progress_mark(update)
            if mark != last:
                last = mark
                self._say(progress_line(update))
            if update.preview is not None and update.preview != preview:
                preview = update.preview
                self._say(f"  preview: {self._write_preview(ticket.job_id, preview)}")
        try:
            made = await ticket.result()
        except Postponed as error:
            self._say(f"Sorry: {error}")
            return  # still queued: the next start reports it
        except EditCancelled:
            self._say("The edit was cancelled.")
        except UserError as error:
            self._say(f"Sorry: {error}")
        else:
            if isinstance(made, VariationSet):
                await self._show_variations(made)
            else:
                await self._show(made, "Done:")
        await self._service.outbox.mark_delivered(ticket.job_id)

    async def _show(self, version: Version, verb: str) -> None:
        """Make a version current, write its image and print where it is."""
        await self._service.update_channel_options(self._place, **{CURRENT: version.id})
        path = self._outputs / f"{version.id}.png"
        if not path.exists():
            self._outputs.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self._service.image_png(version.id, place=self._place))
        self._say(f"{verb} version {version.id} ({describe(version)}): {path}")
        for note in version.notes:
            self._say(f"  Note: {note}")

    def _current(self) -> Version | None:
        version_id = self._service.channel_options(self._place).get(CURRENT)
        if version_id is None:
            return None
        try:
            return self._service.get_version(version_id, place=self._place)
        except UserError:
            return None

    def _require_current(self) -> Version:
        current = self._current()
        if current is None:
            raise UserError("There is no image yet. Start with /load PATH (see /help).")
        return current

    def _reply_context(self) -> dict[str, str]:
        return {"console": self._place.channel_id}

    def _say(self, text: str) -> None:
        self._stdout.write(text + "\n")
        self._stdout.flush()


def _read_file(name: str) -> tuple[Path, bytes] | str:
    """The file's path and bytes, or a message saying politely why it can't be read."""
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # "~someone/…" for a user this machine doesn't know
        return f"I can't find the home folder in {name}. Please check the path."
    try:
        return path, path.read_bytes()
    except ValueError:  # a NUL character in the path
        return "That path contains a character no file name can have. Please check it."
    except FileNotFoundError:
        return f"I can't find the file {path}. Please check the path."
    except IsADirectoryError:
        return f"{path} is a folder; please give the path of an image file."
    except OSError as error:
        return f"I can't read {path}: {error.strerror}."


async def serve_console(service: EditService, chat: ConsoleChat) -> None:
    """Run the service for one console chat, recovering this session's unfinished edits first."""
    service.add_listener(chat.on_recovered)
    await service.start()
    try:
        await chat.run()
    finally:
        await service.stop()
