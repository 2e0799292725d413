"""How fast the Discord bot answers: MESSAGE_CREATE → first status message, and → result.

The bot runs as its own process against the fake Discord of the tests (real discord.py,
real HTTP and websocket on 127.0.0.1). Two editors:

* ``stub``: the tests' stand-in editor (a few milliseconds per step) behind the real service
  and worker, composed as ``bot.py`` composes them, so the numbers are the bot's own overhead
  and the queue;
* ``tiny``: the real ``bot.py`` with the tiny random-weight models (every pipeline stage
  runs; CPU, one thread).

Each of N users posts ``--rounds`` requests one after the other, all users at once.

    python bench/bot_bench.py                      # stub and tiny, 1 and 20 users
    python bench/bot_bench.py --editor stub --users 1,20 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.discord import FakeDiscord, Record  # noqa: E402  (needs the repository root on the path)
from tests.support.discord.bot_process import (  # noqa: E402
    BotProcess,
    is_attachment_reply,
    png_bytes,
    replies_to,
    write_bot_config,
)

BENCH_SCRIPT = Path(__file__).resolve()


@dataclass(frozen=True)
class Sample:
    status_s: float
    result_s: float


@dataclass(frozen=True)
class Row:
    editor: str
    users: int
    requests: int
    wall_s: float
    status_p50_s: float
    status_p99_s: float
    result_p50_s: float
    result_p99_s: float


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (with few samples, p99 is the slowest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def bot_message(check: Callable[[dict[str, Any]], bool]) -> Callable[[Record], bool]:
    """Matches the record of a message the bot posted that passes ``check``."""
    return lambda record: record.kind == "message" and record.result is not None and check(record.result)


async def one_user(fake: FakeDiscord, user: str, rounds: int, channel_id: str) -> list[Sample]:
    samples = []
    for number in range(rounds):
        asked = time.monotonic()
        request = await fake.send_message(
            user, channel_id, f"make it blue {number}", files=[("photo.png", png_bytes())], mention_bot=True
        )
        status = await fake.wait_for(bot_message(replies_to(request["id"])), 60)
        result = await fake.wait_for(bot_message(is_attachment_reply(request["id"])), 900)
        samples.append(Sample(status.at - asked, result.at - asked))
    return samples


async def measure(
    editor: str, users: int, rounds: int, *, tiny_config: Path, folder: Path, bot_script: Path
) -> Row:
    fake = FakeDiscord()
    await fake.start()
    names = [fake.add_user(f"user{n}")["username"] for n in range(users)]
    config = write_bot_config(
        tiny_config,
        folder / f"{editor}-{users}.db",
        {"worker": {"max_queue": 200, "per_user_cap": 3}, "discord": {"progress_interval_s": 1.5}},
    )
    script = BENCH_SCRIPT if editor == "stub" else bot_script
    bot = BotProcess(fake, config, folder / f"{editor}-{users}.log", script=script)
    await bot.start()
    try:
        started = time.monotonic()
        channel = fake.channels["general"]["id"]
        batches = await asyncio.gather(*(one_user(fake, name, rounds, channel) for name in names))
        wall = time.monotonic() - started
    finally:
        await bot.stop()
        await fake.stop()
    samples = [sample for batch in batches for sample in batch]
    status = [s.status_s for s in samples]
    result = [s.result_s for s in samples]
    return Row(
        editor,
        users,
        len(samples),
        round(wall, 2),
        round(statistics.median(status), 3),
        round(percentile(status, 0.99), 3),
        round(statistics.median(result), 3),
        round(percentile(result, 0.99), 3),
    )


def serve_stub() -> None:
    """The bot with the stub editor: what ``bot.py`` composes, with the stand-in editor instead.

    Started by the test launcher (``tests/support/discord/launcher.py``), which has already
    pointed discord.py at the fake Discord.
    """
    from editor.logs import setup_logging
    from handlers.discord.bot import run_discord
    from sessions import compose, load_config
    from tests.support.editor import StandInEditor

    setup_logging()
    config = load_config(Path(sys.argv[sys.argv.index("--config") + 1]))
    app = compose(config, editor=StandInEditor(step_s=0.01, steps=10, defaults=config.edit))
    try:
        asyncio.run(run_discord(config, app.service, os.environ["DISCORD_TOKEN"]))
    finally:
        app.close()


async def main(args: argparse.Namespace) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bot-bench-") as temporary:
        folder = Path(temporary)
        if args.tiny_dir:
            tiny_config = Path(args.tiny_dir) / "config.yaml"
        else:
            from editor.tiny import write_tiny_models

            tiny_config = write_tiny_models(folder / "tiny")
        rows = []
        for editor in args.editor.split(","):
            for users in (int(n) for n in args.users.split(",")):
                rounds = args.rounds if args.rounds else (5 if users == 1 else 1 if editor == "tiny" else 3)
                row = await measure(
                    editor, users, rounds, tiny_config=tiny_config, folder=folder, bot_script=args.bot_script
                )
                print(
                    f"{row.editor:5} users={row.users:3} requests={row.requests:3} wall={row.wall_s:7.2f}s  "
                    f"status p50={row.status_p50_s:.3f}s p99={row.status_p99_s:.3f}s  "
                    f"result p50={row.result_p50_s:.3f}s p99={row.result_p99_s:.3f}s",
                    flush=True,
                )
                rows.append(row)
        return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", default="stub,tiny", help="stub, tiny or both (comma-separated)")
    parser.add_argument("--users", default="1,20", help="concurrent users per run (comma-separated)")
    parser.add_argument(
        "--rounds", type=int, default=0, help="requests per user (0: 5 alone, fewer in a crowd)"
    )
    parser.add_argument(
        "--tiny-dir", help="a folder from `python -m editor tiny-models DIR` (default: a fresh one)"
    )
    parser.add_argument(
        "--bot-script", type=Path, default=ROOT / "bot.py", help="the bot run with the tiny models"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args()


if __name__ == "__main__":
    if "--config" in sys.argv:  # started by the test launcher as the bot under test
        serve_stub()
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        arguments = parse_args()
        table = asyncio.run(main(arguments))
        if arguments.json:
            arguments.json.write_text(json.dumps([asdict(row) for row in table], indent=2), encoding="utf-8")
