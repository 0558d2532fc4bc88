"""Prometheus metrics, defined once for the bot and the workers (``JAMGEN_METRICS_PORT``, off when unset).

Each process makes one :class:`Metrics` on its own registry and serves it with :meth:`Metrics.serve`.
Label values come from small fixed sets (:data:`END_STATES`, :data:`FAILURE_REASONS`), never from
free text, so the number of series stays bounded.

=========================================  =========  ===========================================================
metric                                     type       what
=========================================  =========  ===========================================================
``jamgen_queue_depth``                     gauge      jobs waiting, all models
``jamgen_jobs_ended_total{state}``         counter    jobs this process ended: ``done``, ``failed``, ``cancelled``
``jamgen_failures_total{reason}``          counter    ``oom``, ``invalid`` (refused), ``error``, ``lost`` (taken
                                                      over by another worker), ``dead_letter``
``jamgen_rows``                            gauge      rows of the decode loop (``JAMGEN_MAX_BATCH``)
``jamgen_rows_in_use``                     gauge      rows holding a job
``jamgen_decode_steps_per_second``         gauge      measured decode steps per wall second (a moving average)
``jamgen_audio_seconds_per_second``        gauge      measured audio seconds per wall second, all rows together
``jamgen_request_to_delivery_seconds``     histogram  from the user's request to the file posted
=========================================  =========  ===========================================================
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal, get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from generation.errors import OOM_REASON, GenerationError

log = logging.getLogger(__name__)

EndState = Literal["done", "failed", "cancelled"]
FailureReason = Literal["oom", "invalid", "error", "lost", "dead_letter"]
END_STATES: tuple[EndState, ...] = get_args(EndState)
FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)
DELIVERY_BUCKETS = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


def failure_reason(reason: str) -> FailureReason:
    """The metrics' class of a job's failure from the engine's words (the words are free text; the class is not)."""
    return "oom" if reason == OOM_REASON else "error"


class MetricsUnavailable(GenerationError):
    """``JAMGEN_METRICS_PORT`` cannot be bound."""


def serve_metrics(metrics: Metrics, port: int | None, host: str) -> MetricsServer | None:
    """The ``/metrics`` endpoint of ``metrics`` when a port is set (``JAMGEN_METRICS_PORT``), else ``None``."""
    if port is None:
        return None
    try:
        return metrics.serve(port, host)
    except OSError as exc:
        raise MetricsUnavailable(
            f"cannot serve metrics on {host}:{port} ({exc}): free the port or change JAMGEN_METRICS_PORT"
        ) from exc


@dataclass
class MetricsServer:
    """The HTTP endpoint (``/metrics``) on its own thread; :meth:`close` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Metrics:
    """Every metric of one process, on ``registry`` (a private one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.queue_depth = Gauge("jamgen_queue_depth", "Jobs waiting, all models.", registry=reg)
        self.jobs_ended = Counter("jamgen_jobs_ended", "Jobs this process ended, by state.", ["state"], registry=reg)
        self.failures = Counter("jamgen_failures", "Failures, by reason.", ["reason"], registry=reg)
        self.rows = Gauge("jamgen_rows", "Rows of the decode loop (JAMGEN_MAX_BATCH).", registry=reg)
        self.rows_in_use = Gauge("jamgen_rows_in_use", "Rows holding a job.", registry=reg)
        self.steps_per_second = Gauge(
            "jamgen_decode_steps_per_second", "Measured decode steps per wall second.", registry=reg
        )
        self.audio_seconds_per_second = Gauge(
            "jamgen_audio_seconds_per_second", "Measured audio seconds generated per wall second.", registry=reg
        )
        self.delivery_seconds = Histogram(
            "jamgen_request_to_delivery_seconds", "Seconds from a request to its file posted.",
            buckets=DELIVERY_BUCKETS, registry=reg,
        )
        for state in END_STATES:
            self.jobs_ended.labels(state)  # every series exists from the start, at 0
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)

    def ended(self, state: EndState) -> None:
        if state not in END_STATES:
            raise ValueError(f"not a job end state: {state!r}")
        self.jobs_ended.labels(state).inc()

    def failed(self, reason: FailureReason) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"not a failure reason: {reason!r}")
        self.failures.labels(reason).inc()

    def speeds(self, throughput: float | None, steps_per_second: float | None) -> None:
        """Set the measured speeds (a speed not measured yet is left as it is)."""
        if throughput is not None:
            self.audio_seconds_per_second.set(throughput)
        if steps_per_second is not None:
            self.steps_per_second.set(steps_per_second)

    def value(self, name: str, **labels: str) -> float | None:
        """A sample's current value (``jamgen_jobs_ended_total``, ``state="done"``), for tests and checks."""
        return self.registry.get_sample_value(name, labels)

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` on ``host:port`` (port 0: a free one) until :meth:`MetricsServer.close`."""
        server, thread = start_http_server(port, host, registry=self.registry)
        served = MetricsServer(server, thread)
        log.info("metrics on http://%s:%d/metrics", host, served.port)
        return served
