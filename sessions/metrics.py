"""The bot's Prometheus metrics, fed by the job runner as each edit is queued, started and recorded.

Counters only go up for the life of the process (Prometheus' ``rate()`` and ``increase()``
handle restarts), so they count events as they happen rather than re-reading the database.
Gauges are read when scraped: queue depth and the running edit from the worker, jobs by state
from the store, GPU memory from torch. One registry per service, so two services in one process
(tests, benchmarks) keep separate counts. Transports serve :meth:`EditMetrics.exposition`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from editor.loading import vram_bytes
from editor.types import EditCancelled, InvalidInput, WorkResult
from sessions.models import JobKind

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from editor.worker import EditWorker
    from sessions.store import Store

#: How an edit can end: recorded, failed, cancelled, put off by a stop, given up after crashes,
#: or refused before it was queued (a full queue, the per-user cap).
OUTCOMES = ("done", "failed", "cancelled", "postponed", "interrupted", "rejected")

#: The kinds of request (``sessions.models.JobKind``), each counted from zero.
JOB_KINDS: tuple[str, ...] = get_args(JobKind)

#: Why an edit failed: too slow, bad input found by the engine, out of GPU memory, an engine bug,
#: or the result could not be saved.
ERROR_KINDS = ("timeout", "invalid_input", "out_of_memory", "unexpected", "recording")

#: Queue waits from a moment to an hour; a stage from a tenth of a second to ten minutes.
_WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
_STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class EditMetrics:
    """Counters, histograms and gauges of one service's edits, in their own registry."""

    #: The media type of :meth:`exposition`.
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, worker: EditWorker, store: Store) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._edits = Counter(
            "onthefly_edits", "Edits that ended, by outcome.", ["outcome"], registry=registry
        )
        self._fallbacks = Counter(
            "onthefly_lm_fallbacks",
            "Edits whose language model gave no usable captions, so the fallback captions were used.",
            registry=registry,
        )
        self._errors = Counter(
            "onthefly_errors", "Failed edits by kind of error.", ["kind"], registry=registry
        )
        self._kinds = Counter(
            "onthefly_edits_done_by_kind",
            "Edits recorded, by kind of request (a batch of variations counts once).",
            ["kind"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self._edits.labels(outcome)
        for kind in JOB_KINDS:
            self._kinds.labels(kind)
        for kind in ERROR_KINDS:
            self._errors.labels(kind)
        self._wait = Histogram(
            "onthefly_queue_wait_seconds",
            "Time from queueing an edit to its start.",
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self._stages = Histogram(
            "onthefly_edit_stage_seconds",
            "Time each stage of a finished edit took.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.gauge(
            "onthefly_queue_depth", "Edits waiting, not counting the running one.", lambda: worker.queue_depth
        )
        self.gauge(
            "onthefly_running_jobs",
            "Edits running now (the worker runs one at a time).",
            lambda: 0 if worker.running_job_id is None else 1,
        )
        self.gauge("onthefly_vram_bytes", "GPU memory held by tensors (0 without a GPU).", vram_bytes)
        registry.register(_JobsByState(store))

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read when scraped, e.g. a transport's connection state."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format (:attr:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    # --- what the job runner reports ----------------------------------------------------

    def started(self, waited_s: float) -> None:
        self._wait.observe(waited_s)

    def done(self, result: WorkResult, kind: str = "continue") -> None:
        """An edit recorded: one result, or a batch of variations (one job, its stages run once)."""
        results = result if isinstance(result, tuple) else (result,)
        self._edits.labels("done").inc()
        self._kinds.labels(kind).inc()
        self._fallbacks.inc(sum(1 for one in results if one.used_fallback_captions))
        for stage, seconds in results[0].timings.items():
            self._stages.labels(stage).observe(seconds)

    def ended(self, outcome: str) -> None:
        """An edit that ended without a result (``done`` has its own report)."""
        self._edits.labels(outcome).inc()

    def failed(self, kind: str) -> None:
        self._edits.labels("failed").inc()
        self._errors.labels(kind).inc()


def error_kind(error: BaseException) -> str:
    """The :data:`ERROR_KINDS` entry for what the engine raised (the worker's EditFailed's cause)."""
    if isinstance(error, EditCancelled):  # the worker stopped it at its time limit
        return "timeout"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return "out_of_memory"
    return "unexpected"


class _JobsByState(Collector):
    """Jobs in the database by state, counted when scraped."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("onthefly_jobs", "Jobs in the database by state.", labels=["state"])
        for state, count in sorted(self._store.job_counts().items()):
            family.add_metric([state], count)
        yield family
