"""Running the real ``bot.py`` as a subprocess against a :class:`FakeDiscord`, and reading its replies."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from tests.support.discord.server import FakeDiscord
from tests.support.discord.wire import buttons

ROOT = Path(__file__).resolve().parents[3]
LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
#: The bot with the stand-in editor (starts in a second; see ``stub_bot.py``).
STUB_BOT = Path(__file__).resolve().parent / "stub_bot.py"


def png_bytes(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_bot_config(tiny_config: Path, database: Path, sections: dict[str, Any]) -> Path:
    """A config next to the tiny models (their paths are relative to it) with ``sections`` merged in."""
    data = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    for name, section in sections.items():
        merged = dict(data.get(name) or {})
        merged.update(section)
        data[name] = merged
    data["storage"] = {**(data.get("storage") or {}), "database": str(database)}
    path = tiny_config.parent / f"discord-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class BotProcess:
    """One run of ``bot.py`` (through the test launcher); its log goes to ``log_path``."""

    def __init__(
        self,
        fake: FakeDiscord,
        config: Path,
        log_path: Path,
        script: Path = ROOT / "bot.py",
        *,
        verbose: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.verbose = verbose
        self.fake = fake
        self.config = config
        self.log_path = log_path
        self.script = script
        self.env = env or {}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, within: float = 120.0) -> None:
        env = dict(
            os.environ,
            DISCORD_TOKEN=self.fake.token,
            HF_HUB_OFFLINE="1",
            # One thread: several OpenMP threads on busy shared cores run many times slower.
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            **self.env,
        )
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(LAUNCHER),
                self.fake.base_url,
                str(self.script),
                "--",
                "--config",
                str(self.config),
                *(["--verbose"] if self.verbose else []),
                env=env,
                stdout=log,
                stderr=log,
                cwd=str(ROOT),
            )
        waiting = asyncio.create_task(self.fake.wait_connected(within))
        exited = asyncio.create_task(self.process.wait())
        done, _ = await asyncio.wait({waiting, exited}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiting, exited):
            task.cancel()
        if waiting not in done or waiting.cancelled() or waiting.exception() is not None:
            await self.kill()
            raise RuntimeError(f"the bot did not connect; its log:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, within: float = 30.0) -> int:
        """SIGTERM: the bot closes cleanly (jobs not finished stay queued for the next start)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            await self.kill()
            raise
        await self.fake.wait_disconnected()
        return code

    async def kill(self) -> None:
        """SIGKILL: a crash, as far as the bot can tell."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        await self.fake.wait_disconnected()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def replies_to(message_id: str) -> Any:
    return lambda m: (m.get("message_reference") or {}).get("message_id") == message_id


def is_result(message: dict[str, Any]) -> bool:
    return bool(message["attachments"]) and "Retry" in buttons(message)


def is_attachment_reply(message_id: str) -> Any:
    return lambda m: replies_to(message_id)(m) and bool(m["attachments"])


def status_final(status_id: str, prefix: str) -> Any:
    return lambda m: m["id"] == status_id and m["content"].startswith(prefix)
