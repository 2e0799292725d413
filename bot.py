"""The composition root: read the config, build store → editor → worker → service, start a transport.

``python bot.py`` (installed: ``onthefly``) runs the Discord bot when ``DISCORD_TOKEN`` is set;
without it, in a terminal, the console chat (``--console`` forces it, and also reads a pipe).
``--check`` validates every section of the config, opens the database, loads the models and exits
with a verdict. The config is read here, once; ``sessions.compose`` builds the parts, and they are
handed down. Every way of failing to start is one logged line and a non-zero exit: 2 for what the
admin must fix in the config or the environment, 1 for what was found broken or unreachable.
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

from editor.logs import setup_logging
from handlers.console import ConsoleChat, serve_console
from sessions import (
    App,
    AppConfig,
    Author,
    ConfigError,
    StorageUnavailable,
    compose,
    find_config,
    load_config,
)

log = logging.getLogger("bot")

NO_TOKEN_NO_TERMINAL = (
    "DISCORD_TOKEN is not set and there is no terminal to chat in. Set DISCORD_TOKEN (for Docker, "
    "in the env file) to run the Discord bot, or pass --console to read the chat from standard input."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="onthefly",
        description="Pix2Pix-OnTheFly: conversational image editing on Discord or in a terminal.",
    )
    parser.add_argument(
        "--config", type=Path, help="config file (default: ./config.yaml if there is one, else the defaults)"
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="chat in the terminal (or through a pipe) even if DISCORD_TOKEN is set",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config, load the models, report and exit"
    )
    parser.add_argument("--session", help="console session name (default: the config's console.session)")
    parser.add_argument(
        "--no-previews", action="store_true", help="console: no previews of edits forming (no paths printed)"
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    loudness.add_argument("--verbose", action="store_true", help="log debugging details too")
    parser.add_argument("--log-file", type=Path, help="also log to this file, rotated at 10 MB (3 kept)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(-1 if args.quiet else 1 if args.verbose else 0, args.log_file)
    config_file = find_config(args.config)
    try:
        config = load_config(config_file)
    except ConfigError as error:
        log.error("Config problem: %s", error)
        return 2
    log.info("config: %s", config_file or "none found, using the built-in defaults")
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not (args.check or args.console or token or sys.stdin.isatty()):
        log.error(NO_TOKEN_NO_TERMINAL)
        return 2

    try:
        app = compose(config)
    except ConfigError as error:  # a model that cannot be found is a config problem too
        log.error("Cannot start: %s", error)
        return 2
    except StorageUnavailable as error:
        log.error("Cannot start: %s", error)
        return 1
    except (OSError, ValueError) as error:
        log.error("Could not load the models: %s", error)
        return 1
    try:
        if args.check:
            return report_check(app, token)
        try:
            return asyncio.run(_transport(app, args, token)) or 0
        except KeyboardInterrupt:
            print("\nStopped; unfinished edits will continue next time.", flush=True)
            return 130
    finally:
        app.close()


def _transport(app: App, args: argparse.Namespace, token: str) -> Coroutine[Any, Any, int | None]:
    """The console chat without a token (or with ``--console``), the Discord bot otherwise."""
    if args.console or not token:
        user = app.config.console.user or _login_name()
        if not args.verbose:  # the chat itself shows each request and result
            logging.getLogger("sessions.jobs").setLevel(logging.WARNING)
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="replace")  # a stray non-UTF-8 byte is not the end of the chat
        chat = ConsoleChat(
            app.service,
            session=args.session or app.config.console.session,
            author=Author(id=f"console:{user}", name=user),
            outputs=app.config.storage.outputs_path,
            stdin=sys.stdin,
            stdout=sys.stdout,
            previews=not args.no_previews,
        )
        return serve_console(app.service, chat)
    from handlers.discord.bot import run_discord  # discord.py only for the Discord transport

    return run_discord(app.config, app.service, token)


def report_check(app: App, token: str) -> int:
    """The verdict of ``--check``: what was loaded, where, and whether a token is set (never its value)."""
    config: AppConfig = app.config
    print(
        f"OK: {config.path or 'the built-in config'} is valid; {_where_the_models_are(app)}; "
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
