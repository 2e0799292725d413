"""What the bot did, as the fake saw it: a log the tests wait on, and failures injected per route."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.discord.wire import Record, json_response

#: The ``status`` of a rule whose calls get no answer at all (the request hangs).
HANG = 0
#: The ``status`` of a rule whose calls lose their connection (a TCP reset, no answer).
RESET = 1


@dataclass
class FailureRule:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float
    body: dict[str, Any] | None
    #: Only calls whose (JSON body, uploaded files) pass this are affected.
    when: Callable[[Any, tuple[Any, ...]], bool] | None = None


class Journal:
    """Every request the bot made (snapshots), awaitable; and the failures still to inject."""

    def __init__(self) -> None:
        self.log: list[Record] = []
        self._log_changed = asyncio.Condition()
        self._failures: list[FailureRule] = []
        #: What hanging calls wait for: the fake stopping.
        self._stopping = asyncio.Event()

    async def record(self, record: Record) -> None:
        """Log a snapshot: the stored message keeps changing as the bot edits it."""
        record = dataclasses.replace(record, result=copy.deepcopy(record.result))
        async with self._log_changed:
            self.log.append(record)
            self._log_changed.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[Record], bool],
        within: float = 30.0,
        *,
        since: int = 0,
        description: str = "a matching request",
    ) -> Record:
        """The first record (from index ``since``) matching ``predicate``, waiting for it if needed."""
        deadline = time.monotonic() + within
        position = since
        async with self._log_changed:
            while True:
                for record in self.log[position:]:
                    if predicate(record):
                        return record
                position = len(self.log)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    recent = "\n".join(_describe(r) for r in self.log[since:][-15:])
                    raise TimeoutError(f"no {description} within {within}s; the last records:\n{recent}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._log_changed.wait(), remaining)

    async def wait_for_message(
        self,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        within: float = 30.0,
        *,
        since: int = 0,
        kinds: tuple[str, ...] = ("message",),
    ) -> dict[str, Any]:
        """A message the bot created (or edited, with ``kinds=("edit",)``) matching ``predicate``."""
        record = await self.wait_for(
            lambda r: r.kind in kinds and r.result is not None and predicate(r.result),
            within,
            since=since,
            description=f"bot message ({'/'.join(kinds)})",
        )
        assert record.result is not None
        return record.result

    def records(self, kind: str, since: int = 0) -> list[Record]:
        return [r for r in self.log[since:] if r.kind == kind]

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 500,
        times: int = 1,
        retry_after: float = 0.05,
        body: dict[str, Any] | None = None,
        when: Callable[[Any, tuple[Any, ...]], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` matching REST calls with ``status`` (429s carry Via +
        retry_after; :data:`HANG` never answers, :data:`RESET` drops the connection); ``when``
        narrows them by body and files."""
        self._failures.append(
            FailureRule(method.upper(), re.compile(path_pattern), status, times, retry_after, body, when)
        )

    def clear_failures(self) -> None:
        """Forget the failures still to inject (say, before the bot starts again)."""
        self._failures.clear()

    async def hang(self) -> None:
        await self._stopping.wait()

    def release_hanging(self) -> None:
        """Let hanging calls end, so the server stops at once instead of waiting for them."""
        self._stopping.set()

    def failure_for(
        self, method: str, path: str, body: Any = None, files: tuple[Any, ...] = ()
    ) -> web.Response | None:
        """The injected answer to this call, if one is due (counted as used); a response with
        status :data:`HANG` means: don't answer, :data:`RESET`: drop the connection."""
        for rule in self._failures:
            if (
                rule.remaining > 0
                and rule.method in (method, "*")
                and rule.pattern.search(path)
                and (rule.when is None or rule.when(body, files))
            ):
                rule.remaining -= 1
                if rule.status in (HANG, RESET):
                    return web.Response(status=rule.status)
                if rule.status == 429:
                    body = rule.body or {
                        "message": "You are being rate limited.",
                        "retry_after": rule.retry_after,
                        "global": False,
                    }
                    return json_response(
                        body, 429, {"Via": "1.1 google", "Retry-After": str(rule.retry_after)}
                    )
                return json_response(rule.body or {"message": "Injected failure", "code": 0}, rule.status)
        return None


def _describe(record: Record) -> str:
    result = record.result or {}
    reference = (result.get("message_reference") or {}).get("message_id")
    return (
        f"{record.kind} {record.method} {record.path} id={result.get('id')} reply_to={reference} "
        f"files={len(result.get('attachments') or [])} {str(result.get('content', ''))[:70]!r}"
    )
