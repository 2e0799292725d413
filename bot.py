"""The composition root: read the config, build store → editor → worker → service, start a transport.

``python bot.py --console [--config PATH]`` chats in the terminal; so does ``python bot.py``
when no ``DISCORD_TOKEN`` is set. With a token, the Discord bot (``handlers/discord``) runs.
``python bot.py --check`` validates every section of the config, opens the database, loads
the models and exits with a verdict. Everything is built here, once, and handed down.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

from editor.config import ConfigError, edit_defaults, engine_config, load_yaml
from editor.worker import EditWorker, worker_config
from handlers.console import ConsoleChat, serve_console
from sessions.config import console_config, storage_config
from sessions.models import Author
from sessions.service import EditService
from sessions.store import Store

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
        data = load_yaml(args.config)
        check_sections(data)
        engine = engine_config(data)
        defaults = edit_defaults(data)
        storage = storage_config(data)
        workers = worker_config(data)
        console = console_config(data)
    except ConfigError as error:
        print(f"Config problem: {error}", file=sys.stderr)
        return 2
    token = os.environ.get("DISCORD_TOKEN", "").strip()

    store = Store.open(
        storage.database_path,
        inversion_cache_bytes=storage.inversion_cache_bytes,
        busy_timeout_s=storage.busy_timeout_s,
    )
    try:
        print("Loading the models…", flush=True)
        from editor.engine import Editor  # torch and the models: only once the config is known good

        try:
            editor = Editor.load(engine, defaults)
        except (OSError, ValueError) as error:
            print(f"Could not load the models: {error}", file=sys.stderr)
            return 1
        if args.check:
            return report_check(args.config, editor, storage.database_path, token)
        service = EditService(
            store,
            EditWorker(editor, workers),
            editor.defaults,
            editor.inversion_key,
            check_inputs=editor.check_inputs,
            templates=editor.template_names,
        )
        if args.console or not token:
            user = console.user or _login_name()
            if isinstance(sys.stdin, io.TextIOWrapper):
                sys.stdin.reconfigure(errors="replace")  # a stray non-UTF-8 byte is not the end of the chat
            chat = ConsoleChat(
                service,
                session=args.session or console.session,
                author=Author(id=f"console:{user}", name=user),
                outputs=storage.outputs_path,
                stdin=sys.stdin,
                stdout=sys.stdout,
            )
            transport = serve_console(service, chat)
        else:
            from handlers.discord.bot import run_discord  # discord.py only for the Discord transport

            transport = run_discord(data, service, token)
        try:
            asyncio.run(transport)
        except KeyboardInterrupt:
            print("\nStopped; unfinished edits will continue next time.", flush=True)
            return 130
        return 0
    finally:
        store.close()


KNOWN_SECTIONS = ("engine", "edit", "worker", "storage", "console", "discord", "ops", "evaluation")


def check_sections(data: dict[str, Any]) -> None:
    """Every section parses: a typo anywhere is reported now, not when that part first runs."""
    unknown = sorted(set(data) - {*KNOWN_SECTIONS, "_base_dir"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(KNOWN_SECTIONS)}")
    from editor.evaluate.strategies import evaluation_config
    from handlers.discord.config import discord_config, ops_config

    discord_config(data)
    ops_config(data)
    evaluation_config(data)


def report_check(config: Path, editor: Any, database: Path, token: str) -> int:
    """The verdict of ``--check``: what was loaded, where, and whether a token is set (never its value)."""
    device = editor.diffusion.device
    dtype = str(editor.diffusion.dtype).removeprefix("torch.")
    print(f"OK: {config} is valid; models loaded on {device} ({dtype}); database {database} is ready.")
    print(f"Prompt templates: {', '.join(editor.template_names)}.")
    print(
        "DISCORD_TOKEN is set: `python bot.py` starts the Discord bot."
        if token
        else "DISCORD_TOKEN is not set: `python bot.py` starts the console chat."
    )
    return 0


def _login_name() -> str:
    """The operating-system user, or a neutral name where there is none (some containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


if __name__ == "__main__":
    sys.exit(main())
