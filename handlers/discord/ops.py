"""The ops endpoint: ``/health`` and ``/metrics`` (Prometheus text format) over plain HTTP.

Off by default and bound to 127.0.0.1: it says how busy the bot is, which is nobody's
business outside the machine unless the operator decides so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sessions import OpsConfig

log = logging.getLogger(__name__)

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _sample(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{key}="{_escape(val)}"' for key, val in sorted(labels.items()))
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(stats: dict[str, Any], connected: bool, latency_s: float | None) -> str:
    """The service's stats as Prometheus metrics (summaries over the recent edits it keeps)."""
    lines = [
        "# HELP onthefly_up Whether the bot is connected to the Discord gateway.",
        "# TYPE onthefly_up gauge",
        _sample("onthefly_up", 1 if connected else 0),
        "# HELP onthefly_queue_depth Edits waiting, not counting the running one.",
        "# TYPE onthefly_queue_depth gauge",
        _sample("onthefly_queue_depth", stats.get("queue_depth", 0)),
        "# HELP onthefly_edit_running Whether an edit is running now.",
        "# TYPE onthefly_edit_running gauge",
        _sample("onthefly_edit_running", 1 if stats.get("running_job_id") else 0),
        "# HELP onthefly_jobs Jobs in the database by state.",
        "# TYPE onthefly_jobs gauge",
    ]
    for state, count in sorted((stats.get("jobs") or {}).items()):
        lines.append(_sample("onthefly_jobs", count, {"state": state}))
    if latency_s is not None:
        lines += [
            "# HELP onthefly_gateway_latency_seconds Heartbeat round trip to the Discord gateway.",
            "# TYPE onthefly_gateway_latency_seconds gauge",
            _sample("onthefly_gateway_latency_seconds", latency_s),
        ]
    count = stats.get("recent_edits", 0)
    for key, name, help_text in (
        ("wait_s", "onthefly_edit_wait_seconds", "Time recent edits waited in the queue."),
        ("run_s", "onthefly_edit_run_seconds", "Time recent edits took to run."),
    ):
        summary = stats.get(key)
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} summary"]
        if summary:
            lines.append(_sample(name, summary["p50"], {"quantile": "0.5"}))
            lines.append(_sample(name, summary["p95"], {"quantile": "0.95"}))
            lines.append(_sample(f"{name}_sum", summary["mean"] * count))
        lines.append(_sample(f"{name}_count", count if summary else 0))
    return "\n".join(lines) + "\n"


class OpsServer:
    """Serves the endpoint on the bot's event loop; ``stats`` and ``status`` are read per request."""

    def __init__(
        self,
        config: OpsConfig,
        stats: Callable[[], dict[str, Any]],
        status: Callable[[], tuple[bool, float | None]],
    ) -> None:
        self._config = config
        self._stats = stats
        self._status = status
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port)
        await site.start()
        port = self._runner.addresses[0][1]  # the one bound, when the config asks for any (0)
        log.info("ops endpoint on http://%s:%s (/health, /metrics)", self._config.host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        connected, latency = self._status()
        stats = self._stats()
        body = {
            "status": "ok" if connected else "disconnected",
            "discord_connected": connected,
            "gateway_latency_s": latency,
            "queue_depth": stats.get("queue_depth", 0),
            "running": bool(stats.get("running_job_id")),
        }
        return web.Response(
            text=json.dumps(body), status=200 if connected else 503, content_type="application/json"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        connected, latency = self._status()
        text = prometheus_text(self._stats(), connected, latency)
        return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_TYPE})
