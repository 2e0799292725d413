"""The real Discord bot around the stand-in editor, as its own process (tests and benchmarks).

It composes what ``bot.py`` composes, with ``tests/support/editor.py`` instead of the models, so
a bot starts in a second and a crash test can kill it at any moment. Start it through the
launcher, which points discord.py at the fake Discord::

    python tests/support/discord/launcher.py URL tests/support/discord/stub_bot.py -- --config CONFIG

``STUB_STEPS`` and ``STUB_STEP_S`` set the stand-in's pace (default: 10 steps of 10 ms);
``STUB_POST_RETRY_S`` (e.g. ``0.05,0.05``) the waits between tries of a result's post.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path


def main() -> None:
    from editor.logs import setup_logging
    from handlers.discord import delivery
    from handlers.discord.bot import run_discord
    from sessions import compose, load_config
    from tests.support.editor import StandInEditor

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    setup_logging(1 if args.verbose else 0)
    if "STUB_POST_RETRY_S" in os.environ:
        delivery.POST_RETRY_DELAYS_S = tuple(float(s) for s in os.environ["STUB_POST_RETRY_S"].split(","))
    config = load_config(args.config)
    editor = StandInEditor(
        steps=int(os.environ.get("STUB_STEPS", "10")),
        step_s=float(os.environ.get("STUB_STEP_S", "0.01")),
        defaults=config.edit,
    )
    app = compose(config, editor=editor)
    try:
        asyncio.run(run_discord(config, app.service, os.environ["DISCORD_TOKEN"]))
    finally:
        app.close()


if __name__ == "__main__":
    main()
