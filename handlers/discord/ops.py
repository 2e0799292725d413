"""The ops endpoint: ``/health`` (JSON; 503 while Discord is not connected) and ``/metrics`` (Prometheus).

Off by default and bound to 127.0.0.1: it says how busy the bot is, which is nobody's
business outside the machine unless the operator decides so. The metrics themselves are
collected below, by the service (:class:`sessions.EditMetrics`); this serves them, adding
the gateway's state, which only the Discord transport knows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sessions import EditMetrics, OpsConfig

log = logging.getLogger(__name__)


class OpsServer:
    """Serves the endpoint on the bot's event loop; ``stats`` and ``status`` are read per request."""

    def __init__(
        self,
        config: OpsConfig,
        stats: Callable[[], dict[str, Any]],
        status: Callable[[], tuple[bool, float | None]],
        metrics: EditMetrics,
    ) -> None:
        self._config = config
        self._stats = stats
        self._status = status
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        metrics.gauge(
            "onthefly_up", "Whether the bot is connected to the Discord gateway.", lambda: float(status()[0])
        )
        metrics.gauge(
            "onthefly_gateway_latency_seconds",
            "Heartbeat round trip to the Discord gateway (0 while disconnected).",
            lambda: status()[1] or 0.0,
        )

    @property
    def address(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics_page)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._config.host, self._config.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]  # the one bound, when the config asks for any (0)
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

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(), headers={"Content-Type": EditMetrics.CONTENT_TYPE}
        )
