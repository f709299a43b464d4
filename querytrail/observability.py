"""Structured logs and Prometheus metrics shared by every querytrail service.

Logs are one JSON object per line with the request id as a field whenever a line is about a
request (pass ``extra={"request_id": rid}``), so ``grep`` and log shippers can follow one
request across the worker, the executor and the sink. Metrics are served by each long-running
service on its own port (``settings.metrics_port_base`` + a per-service offset).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "APPROVAL_WAIT",
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "EXECUTOR_LATENCY",
    "REQUESTS_BY_DECISION",
    "SERVICE_PORT_OFFSETS",
    "SINK_COMMIT_LATENCY",
    "JsonFormatter",
    "configure_logging",
    "logging_config",
    "observe_published",
    "serve_metrics",
    "start_lag_reporter",
]

# Defence in depth: anything shaped like a JWT or a PEM key is scrubbed from log lines even if
# a caller passes one by mistake. Real protection is never logging them in the first place.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def scrub(text: str) -> str:
    """Replace token- or key-shaped substrings with a placeholder."""
    return _PEM.sub("[private key removed]", _JWT.sub("[token removed]", text))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields (request_id, ...) become keys."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) else scrub(str(value))
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route the root logger to stderr, as JSON lines (or plain text for humans)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


REQUESTS_BY_DECISION = Counter("querytrail_requests_total", "Requests decided, by decision", ["decision"])
APPROVAL_WAIT = Histogram(
    "querytrail_approval_wait_seconds",
    "Time from ApprovalRequested to resolution",
    ["outcome"],
    buckets=(1, 5, 30, 60, 300, 900, 1800, 3600, 7200),
)
EXECUTOR_LATENCY = Histogram(
    "querytrail_executor_seconds",
    "Statement execution time in the executor",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONSUMER_LAG = Gauge(
    "querytrail_consumer_lag", "Messages behind the log end", ["service", "topic", "partition"]
)
SINK_COMMIT_LATENCY = Histogram(
    "querytrail_sink_commit_seconds",
    "Iceberg commit latency of the audit sink",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COST_ALERTS = Counter(
    "querytrail_cost_alerts_total", "Statements that scanned more than the alert factor times their estimate"
)
DEAD_LETTERS = Counter(
    "querytrail_dead_letters_total", "Records sent to the dead-letter topic", ["source_topic"]
)

SERVICE_PORT_OFFSETS = {"ingress": 0, "worker": 1, "executor": 2, "sink": 3}


def serve_metrics(service: str, base_port: int, host: str = "127.0.0.1") -> int | None:
    """Serve /metrics for ``service`` on ``host``; returns the port, or None if it is taken."""
    port = base_port + SERVICE_PORT_OFFSETS.get(service, 9)
    try:
        start_http_server(port, addr=host)
    except OSError:
        logging.getLogger(__name__).warning("metrics port %d is taken; metrics not served", port)
        return None
    logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", host, port)
    return port


def logging_config(service: str, level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    """``configure_logging`` as a dictConfig, for frameworks that set up logging themselves (faust)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "service": service}
        if fmt == "json"
        else {"format": f"%(asctime)s {service} %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"querytrail": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "querytrail"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }


# request id -> when its approval was requested / its execution started (monotonic seconds),
# kept by the process that published them; bounded so a flood of requests cannot grow it.
_PENDING: dict[tuple[str, str], float] = {}
_PENDING_MAX = 100_000


def observe_published(events: Any) -> None:
    """Count what a service just published: decisions, approval waits, execution time, dead letters."""
    import time

    now = time.monotonic()
    for event in events:
        kind = getattr(event, "event_type", "")
        rid = getattr(event, "request_id", "")
        if kind == "PolicyDecided":
            REQUESTS_BY_DECISION.labels(str(event.decision)).inc()
        elif kind in ("ApprovalRequested", "ExecutionStarted"):
            if len(_PENDING) >= _PENDING_MAX:
                _PENDING.pop(next(iter(_PENDING)))
            _PENDING[(kind, rid)] = now
        elif kind == "ApprovalResolved":
            asked = _PENDING.pop(("ApprovalRequested", rid), None)
            if asked is not None:
                APPROVAL_WAIT.labels(str(event.outcome)).observe(now - asked)
        elif kind in ("QueryCompleted", "QueryFailed"):
            started = _PENDING.pop(("ExecutionStarted", rid), None)
            if started is not None:
                outcome = "completed" if kind == "QueryCompleted" else str(event.outcome)
                EXECUTOR_LATENCY.labels(outcome).observe(now - started)
        elif kind == "DeadLetter":
            DEAD_LETTERS.labels(str(event.source_topic)).inc()


def start_lag_reporter(service: str, settings: Any, group: str, interval_s: float = 10.0) -> None:
    """A daemon thread keeping ``querytrail_consumer_lag`` of ``group`` up to date."""
    import threading

    def loop() -> None:
        from querytrail.kafka_clients import partition_lag

        while True:
            try:
                for (topic, partition), lag in partition_lag(settings, group).items():
                    CONSUMER_LAG.labels(service, topic, str(partition)).set(lag)
            except Exception:  # a broker hiccup must never take the service down
                logging.getLogger(__name__).debug("consumer lag unavailable", exc_info=True)
            time.sleep(interval_s)

    import time

    threading.Thread(target=loop, name=f"{service}-lag", daemon=True).start()
