"""A bot process for the crash-recovery tests, to be killed with SIGKILL mid-edit.

``python -m tests.support.recovery_helper DB crash-mid-edit`` makes a first version, then asks
for two edits of it: "add a hat" is held inside the stand-in engine forever, "add a scarf"
waits behind it. The test kills the process once the database says "add a hat" is running.

``python -m tests.support.recovery_helper DB resume [--hold INSTRUCTION]`` starts the service
on the same database, prints one JSON line per job it recovered once that job is over, and
exits; with ``--hold`` that edit is held again (for a second crash).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from pathlib import Path

from PIL import Image

from sessions import Author, EditCancelled, EditService, Place, Ticket, UserError
from tests.support.editor import StandInEditor, stand_in_app

ANN = Author("1", "Ann")
BOB = Author("2", "Bob")


def picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 60, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


PLACE = Place("discord", "1", "2")


async def crash_mid_edit(service: EditService, editor: StandInEditor) -> None:
    ticket = await service.start_edit(PLACE, ANN, picture(), "make it snowy")
    first = await ticket.result()
    await service.outbox.mark_delivered(ticket.job_id)
    editor.hold("add a hat")
    hat = await service.continue_edit(first.id, ANN, "add a hat", place=PLACE, reply_context={"message": 10})
    async for update in hat.progress():  # running, so the scarf surely waits behind it
        if update.state == "running":
            break
    await service.continue_edit(first.id, BOB, "add a scarf", place=PLACE, reply_context={"message": 11})
    await asyncio.Event().wait()  # until killed


async def report(ticket: Ticket) -> dict[str, str]:
    line = {"job": ticket.job_id, "instruction": ticket.job.instruction}
    try:
        version = await ticket.result()
    except EditCancelled:
        return line | {"outcome": "cancelled"}
    except UserError as error:
        return line | {"outcome": type(error).__name__, "message": str(error)}
    return line | {"outcome": "done", "version": version.id}


async def deliver(service: EditService, ticket: Ticket) -> dict[str, str]:
    """Report a recovered job's outcome, as a transport would, and mark it delivered."""
    line = await report(ticket)
    await service.outbox.mark_delivered(ticket.job_id)
    return line


async def resume(service: EditService) -> None:
    """Print each recovered job's outcome; a held one keeps this waiting until killed."""
    recovered: list[Ticket] = []

    async def listener(ticket: Ticket) -> None:
        recovered.append(ticket)

    service.add_listener(listener)
    await service.start()
    for line in await asyncio.gather(*(deliver(service, ticket) for ticket in recovered)):
        print(json.dumps(line), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database", type=Path)
    parser.add_argument("mode", choices=["crash-mid-edit", "resume"])
    parser.add_argument("--hold")
    args = parser.parse_args()
    editor = StandInEditor()
    if args.hold:
        editor.hold(args.hold)
    app = stand_in_app(args.database, editor)
    try:
        if args.mode == "crash-mid-edit":
            await app.service.start()
            await crash_mid_edit(app.service, editor)
        else:
            await resume(app.service)
    finally:
        await app.service.stop()
        app.close()


if __name__ == "__main__":
    asyncio.run(main())
