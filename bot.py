"""The composition root: read the config, build store → editor → worker → service, start a transport.

``python bot.py --console [--config PATH]`` chats in the terminal; so does ``python bot.py``
when no ``DISCORD_TOKEN`` is set. With a token, the Discord bot (``handlers/discord``) runs.
``python bot.py --check`` validates every section of the config, opens the database, loads
the models and exits with a verdict. The config is read here, once; ``sessions.compose`` builds
the parts, and they are handed down.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from handlers.console import ConsoleChat, serve_console
from sessions import App, AppConfig, Author, ConfigError, compose, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pix2Pix-OnTheFly: conversational image editing.")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="config file (default: %(default)s)"
    )
    parser.add_argument(
        "--console", action="store_true", help="chat in the terminal even if DISCORD_TOKEN is set"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config, load the models, report and exit"
    )
    parser.add_argument("--session", help="console session name (default: the config's console.session)")
    parser.add_argument("--verbose", action="store_true", help="log progress details to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"Config problem: {error}", file=sys.stderr)
        return 2
    token = os.environ.get("DISCORD_TOKEN", "").strip()

    print("Loading the models…", flush=True)
    try:
        app = compose(config)
    except (OSError, ValueError) as error:
        print(f"Could not load the models: {error}", file=sys.stderr)
        return 1
    try:
        if args.check:
            return report_check(app, token)
        try:
            asyncio.run(_transport(app, args, token))
        except KeyboardInterrupt:
            print("\nStopped; unfinished edits will continue next time.", flush=True)
            return 130
        return 0
    finally:
        app.close()


def _transport(app: App, args: argparse.Namespace, token: str) -> Coroutine[Any, Any, None]:
    """The console chat without a token (or with ``--console``), the Discord bot otherwise."""
    if args.console or not token:
        user = app.config.console.user or _login_name()
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="replace")  # a stray non-UTF-8 byte is not the end of the chat
        chat = ConsoleChat(
            app.service,
            session=args.session or app.config.console.session,
            author=Author(id=f"console:{user}", name=user),
            outputs=app.config.storage.outputs_path,
            stdin=sys.stdin,
            stdout=sys.stdout,
        )
        return serve_console(app.service, chat)
    from handlers.discord.bot import run_discord  # discord.py only for the Discord transport

    return run_discord(app.config, app.service, token)


def report_check(app: App, token: str) -> int:
    """The verdict of ``--check``: what was loaded, where, and whether a token is set (never its value)."""
    config: AppConfig = app.config
    print(
        f"OK: {config.path} is valid; {_where_the_models_are(app)}; "
        f"database {config.storage.database_path} is ready."
    )
    print(f"Prompt templates: {', '.join(app.service.templates)}.")
    print(
        "DISCORD_TOKEN is set: `python bot.py` starts the Discord bot."
        if token
        else "DISCORD_TOKEN is not set: `python bot.py` starts the console chat."
    )
    return 0


def _where_the_models_are(app: App) -> str:
    """The device and dtype of the models in this process, or the Ray replicas that hold them."""
    if app.replicas is not None:
        from editor.front import EditorFront

        assert isinstance(app.editor, EditorFront), "--check reports on the real engine"
        up = app.replicas.up
        return (
            f"{len(up)} of {app.config.worker.ray.replicas} editor replicas up on Ray "
            f"({app.editor.dtype.removeprefix('torch.')}): {', '.join(info.describe() for info in up)}"
        )
    from editor.engine import Editor  # already imported by compose: the models are loaded

    assert isinstance(app.editor, Editor), "--check reports on the real engine"
    dtype = str(app.editor.diffusion.dtype).removeprefix("torch.")
    return f"models loaded on {app.editor.diffusion.device} ({dtype})"


def _login_name() -> str:
    """The operating-system user, or a neutral name where there is none (some containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


if __name__ == "__main__":
    sys.exit(main())
