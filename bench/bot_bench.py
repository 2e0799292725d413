"""A crowd in one Discord channel: how fast the bot answers, how many edits it makes, whom it refuses.

The real bot runs as its own process against the fake Discord of the tests (real discord.py,
real HTTP and websocket on 127.0.0.1), by default around the tests' stand-in editor
(``--editor stub``: ``STUB_STEPS`` steps of ``--step-s`` each, so the numbers are the bot's own
behaviour and the queue's) or with the tiny random-weight models (``--editor tiny``: ``bot.py``).

``--people`` people share the channel "general". Most post one edit at a time and wait for it
(after a refusal they try again ``--retry-s`` later); ``--heavy`` of them are impatient and keep
``--heavy-parallel`` edits going at once. Each person gets ``--rounds`` results per request line.
Reported:

* first reply p50/p99: the request's MESSAGE_CREATE to the bot's first message answering it;
* status edits per result: every edit of a status message, divided by the results posted;
* peak edits per channel per 5 s: the most message edits the fake saw in any 5-second window
  of one channel (Discord allows about 5);
* refusals, split by whether the person had anything else waiting when they asked.

    python bench/bot_bench.py                          # 50 people, 10 of them heavy, stub editor
    python bench/bot_bench.py --people 20 --rounds 1 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.discord import FakeDiscord, Record  # noqa: E402  (needs the repository root on the path)
from tests.support.discord.bot_process import (  # noqa: E402
    STUB_BOT,
    BotProcess,
    png_bytes,
    write_bot_config,
)

#: How long a person waits for any one answer before the run is declared broken.
PATIENCE_S = 600.0
#: Finished statuses start with one of these.
FINAL_MARKS = ("✅", "⚠️", "🚫")
WINDOW_S = 5.0


@dataclass
class Tally:
    """What the simulated people saw."""

    first_reply_s: list[float] = field(default_factory=list)
    results: int = 0
    #: Refusals of a person with nothing else waiting / with something waiting, by reason.
    refused_idle: Counter[str] = field(default_factory=Counter)
    refused_busy: Counter[str] = field(default_factory=Counter)
    status_ids: set[str] = field(default_factory=set)
    #: Requests each person has posted and not yet seen end.
    outstanding: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class Row:
    editor: str
    people: int
    heavy: int
    requests: int
    results: int
    wall_s: float
    first_reply_p50_s: float
    first_reply_p99_s: float
    status_edits_per_result: float
    peak_edits_per_channel_per_5s: int
    refused_with_nothing_waiting: int
    refused_with_something_waiting: int
    refusal_reasons: dict[str, int]


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (with few samples, p99 is the slowest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def reason_of(text: str) -> str:
    lowered = text.lower()
    for key in ("busy", "already have", "waiting edit"):
        if key in lowered:
            return key
    return text[:60]


def answers(request_id: str, status_id: str | None) -> Any:
    """Matches the result of a request (an image replying to it) or its status turning into a refusal."""

    def match(record: Record) -> bool:
        message = record.result
        if message is None:
            return False
        if record.kind == "message":
            reference = (message.get("message_reference") or {}).get("message_id")
            return reference == request_id and bool(message["attachments"])
        return record.kind == "edit" and message["id"] == status_id and message["content"].startswith("⚠️")

    return match


async def one_request(fake: FakeDiscord, tally: Tally, person: str, text: str, channel: str) -> bool:
    """Post one edit and wait until it ends; True if a result came, False if it was refused."""
    waiting_before = tally.outstanding[person]
    tally.outstanding[person] += 1
    try:
        since = len(fake.log)
        asked = time.monotonic()
        request = await fake.send_message(
            person, channel, text, files=[("photo.png", png_bytes())], mention_bot=True
        )

        def first(record: Record) -> bool:
            message = record.result
            return (
                record.kind == "message"
                and message is not None
                and (message.get("message_reference") or {}).get("message_id") == request["id"]
            )

        reply = await fake.wait_for(first, PATIENCE_S, since=since)
        assert reply.result is not None
        tally.first_reply_s.append(reply.at - asked)
        outcome = reply
        if not reply.result["content"].startswith("⚠️") and not reply.result["attachments"]:
            tally.status_ids.add(reply.result["id"])
            outcome = await fake.wait_for(answers(request["id"], reply.result["id"]), PATIENCE_S, since=since)
        assert outcome.result is not None
        if outcome.result["attachments"]:
            tally.results += 1
            return True
        refusals = tally.refused_busy if waiting_before else tally.refused_idle
        refusals[reason_of(outcome.result["content"])] += 1
        return False
    finally:
        tally.outstanding[person] -= 1


async def request_line(
    fake: FakeDiscord, tally: Tally, person: str, channel: str, args: argparse.Namespace
) -> None:
    """One person's line of requests: ``args.rounds`` results, retrying after refusals."""
    pace = random.Random(person)
    done = 0
    attempts = 0
    while done < args.rounds and attempts < args.max_attempts:
        attempts += 1
        await asyncio.sleep(pace.uniform(0.0, args.think_s))
        if await one_request(fake, tally, person, f"make it blue {attempts}", channel):
            done += 1
        else:
            await asyncio.sleep(args.retry_s)


def final_status(status_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message["id"] == status_id and message["content"].startswith(FINAL_MARKS)


def peak_per_window(times: list[float]) -> int:
    times = sorted(times)
    peak = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= WINDOW_S:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def stub_config(folder: Path, args: argparse.Namespace) -> Path:
    path = folder / "stub.yaml"
    data = {
        "storage": {"database": str(folder / "stub.db")},
        "worker": {"max_queue": args.max_queue, "per_user_cap": args.per_user_cap},
        "discord": {"sync_commands": False},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


async def measure(args: argparse.Namespace, folder: Path) -> Row:
    fake = FakeDiscord()
    await fake.start()
    people = [fake.add_user(f"person{n}")["username"] for n in range(args.people)]
    if args.editor == "stub":
        config = stub_config(folder, args)
        env = {"STUB_STEPS": "10", "STUB_STEP_S": str(args.step_s / 10)}
        bot = BotProcess(fake, config, folder / "bot.log", script=STUB_BOT, env=env)
    else:
        from editor.tiny import write_tiny_models

        tiny = write_tiny_models(folder / "tiny")
        worker = {"max_queue": args.max_queue, "per_user_cap": args.per_user_cap}
        config = write_bot_config(tiny, folder / "tiny.db", {"worker": worker})
        bot = BotProcess(fake, config, folder / "bot.log")
    await bot.start()
    tally = Tally()
    channel = fake.channels["general"]["id"]
    try:
        started = time.monotonic()
        lines = []
        for number, person in enumerate(people):
            parallel = args.heavy_parallel if number < args.heavy else 1
            lines += [request_line(fake, tally, person, channel, args) for _ in range(parallel)]
        await asyncio.gather(*lines)
        wall = time.monotonic() - started
        # Every status reaches its final text before the count (edits may trail the results).
        for status_id in tally.status_ids:
            await fake.wait_for_message(final_status(status_id), PATIENCE_S, kinds=("edit",))
    finally:
        await bot.stop()
        await fake.stop()
    edits = [r for r in fake.log if r.kind == "edit" and r.result is not None]
    by_channel: dict[str, list[float]] = defaultdict(list)
    for record in edits:
        assert record.result is not None
        by_channel[record.result["channel_id"]].append(record.at)
    status_edits = sum(1 for r in edits if r.result is not None and r.result["id"] in tally.status_ids)
    return Row(
        editor=args.editor,
        people=args.people,
        heavy=args.heavy,
        requests=len(tally.first_reply_s),
        results=tally.results,
        wall_s=round(wall, 1),
        first_reply_p50_s=round(statistics.median(tally.first_reply_s), 3),
        first_reply_p99_s=round(percentile(tally.first_reply_s, 0.99), 3),
        status_edits_per_result=round(status_edits / max(1, tally.results), 2),
        peak_edits_per_channel_per_5s=max((peak_per_window(t) for t in by_channel.values()), default=0),
        refused_with_nothing_waiting=sum(tally.refused_idle.values()),
        refused_with_something_waiting=sum(tally.refused_busy.values()),
        refusal_reasons=dict(tally.refused_idle + tally.refused_busy),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", choices=("stub", "tiny"), default="stub")
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--heavy", type=int, default=10, help="people who keep several edits going")
    parser.add_argument("--heavy-parallel", type=int, default=4, help="edits a heavy person keeps going")
    parser.add_argument("--rounds", type=int, default=2, help="results per request line")
    parser.add_argument("--step-s", type=float, default=0.5, help="seconds per stand-in edit")
    parser.add_argument("--think-s", type=float, default=2.0, help="most a person waits before asking")
    parser.add_argument("--retry-s", type=float, default=3.0, help="wait after a refusal")
    parser.add_argument("--max-attempts", type=int, default=40, help="per request line")
    parser.add_argument("--max-queue", type=int, default=50)
    parser.add_argument("--per-user-cap", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the row here")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> Row:
    with tempfile.TemporaryDirectory(prefix="bot-bench-") as temporary:
        row = await measure(args, Path(temporary))
    print(
        f"{row.editor} people={row.people} (heavy {row.heavy}) requests={row.requests} results={row.results} "
        f"wall={row.wall_s}s\n"
        f"  first reply p50={row.first_reply_p50_s:.3f}s p99={row.first_reply_p99_s:.3f}s\n"
        f"  status edits per result={row.status_edits_per_result}  "
        f"peak edits per channel per 5 s={row.peak_edits_per_channel_per_5s}\n"
        f"  refused with nothing waiting={row.refused_with_nothing_waiting}  "
        f"with something waiting={row.refused_with_something_waiting}  reasons={row.refusal_reasons}",
        flush=True,
    )
    return row


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    if arguments.json:
        arguments.json.write_text(json.dumps(asdict(result), indent=2), encoding="utf-8")
