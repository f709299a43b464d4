"""The whole local pipeline as real processes: worker, executor, sink and HTTP ingress.

Builds on the pipeline helper's ``Pipeline`` (one config file, own topic prefix and home, keys
created before any process starts) and adds the audit sink and the HTTP ingress, readiness
checks for each, HTTP calls, and readers of every topic and of the Iceberg table.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from querytrail.settings import SnowflakeProfile
from schemas.codec import DecodeError, EventCodec
from schemas.topics import TOPICS
from tests.pipeline.pipeline_harness import Pipeline

__all__ = [
    "CODEC",
    "REPORT_LINES",
    "SERVICES",
    "Stack",
    "free_port",
    "iceberg_rows",
    "kafka_records",
    "stacks",
]

CODEC = EventCodec()
REPORT_LINES: list[str] = []  # printed in the terminal summary (visible without -s)
SERVICES = ("sink", "worker", "executor", "ingress")
_READY = {"worker": "Worker]: Ready", "executor": "executor consuming", "sink": "sink consuming"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack(Pipeline):
    """A Pipeline plus the audit sink and the HTTP ingress, each a real process."""

    def __init__(self, home: Path, bootstrap: str, prefix: str, profile: SnowflakeProfile, **kw: Any) -> None:
        self.ingress_port = free_port()
        extra = {
            "ingress": {"port": self.ingress_port, "publish_timeout_s": 5.0},
            "iceberg": {"commit_interval_s": 0.5},
            "metrics_port_base": free_port(),  # parallel stacks must not fight over metrics ports
            **kw.pop("extra", {}),
        }
        super().__init__(home, bootstrap, prefix, profile, extra=extra, **kw)
        self.url = f"http://127.0.0.1:{self.ingress_port}"
        self.minted: list[str] = []  # every token minted in this stack (the leak scan's needles)
        self.lock = threading.RLock()  # held while a test kills/restarts, so the supervisor waits
        self.crashes: list[str] = []  # services that exited on their own (restarted by supervise)
        self._supervising = threading.Event()

    # -- processes ---------------------------------------------------------------------------

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        if name != "sink":
            return super().start(name, **env)
        # ``python -m sinks`` configures logging, so readiness shows up in its log
        log = open(self.log(name), "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sinks"],
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
        )
        self.procs[name] = proc
        return proc

    def start_service(self, name: str, timeout: float = 120.0, **env: str) -> None:
        """Start ``name`` and wait until it is ready (its log line, or /healthz for the ingress)."""
        mark = self.log(name).stat().st_size if self.log(name).exists() else 0
        self.start(name, **env)
        if name != "ingress":
            self.wait_log(name, _READY[name], timeout=timeout, after=mark)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"ingress exited {proc.returncode}:\n{self.tail('ingress')}")
            try:
                if self.http("GET", "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"ingress not healthy in {timeout}s:\n{self.tail('ingress')}")

    def start_everything(self) -> None:
        background = [n for n in SERVICES if n != "ingress"]
        for name in background:  # in parallel: each waits for its own group join
            self.start(name)
        for name in background:
            self.wait_log(name, _READY[name], timeout=120)
        self.start_service("ingress")

    def supervise(self) -> threading.Thread:
        """Restart any service that exits on its own, as systemd/Kubernetes would in production.

        The services are crash-only by design (the worker exits 70 when it cannot publish, so its
        input is redelivered); each such exit is counted in ``crashes`` and reported by the tests.
        """

        def loop() -> None:
            while self._supervising.is_set():
                with self.lock:
                    for name, proc in list(self.procs.items()):
                        if proc.poll() is not None:
                            self.crashes.append(f"{name}:{proc.returncode}")
                            self.start(name)
                time.sleep(1.0)

        self._supervising.set()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._supervising.clear()
        with self.lock:
            super().stop()

    def tails(self) -> str:
        return "\n".join(f"--- {n} log ---\n{self.tail(n, 3000)}" for n in (*SERVICES,))

    # -- client side -------------------------------------------------------------------------

    def token(self, sub: str, groups: tuple[str, ...] = (), **claims: Any) -> str:
        token = super().token(sub, groups, **claims)
        self.minted.append(token)
        return token

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout: float = 15.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP call to the ingress: (status, JSON body); OSError when nothing answers."""
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 -- local
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 -- local http
                return int(resp.status), json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return int(err.code), json.loads(raw or b"{}")
            except ValueError:
                return int(err.code), {"raw": raw.decode(errors="replace")}

    def post_query(
        self,
        token: str,
        sql: str,
        prompt: str = "test prompt",
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> tuple[int, dict]:
        body = {"prompt": prompt, "sql": sql, "model": "test-model", "target": "analytics", **fields}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.http("POST", "/v1/queries", body, token, headers=headers)


@contextlib.contextmanager
def stacks(base: Path, bootstrap: str, profile: SnowflakeProfile) -> Iterator[Callable[..., Stack]]:
    """A factory of Stacks on fresh topics under ``base``; every one is stopped on exit."""
    from infra.topics import create_topics
    from tests.pipeline.pipeline_harness import new_prefix

    made: list[Stack] = []

    def make(bootstrap_: str | None = None, profile_: SnowflakeProfile | None = None, **kw: Any) -> Stack:
        prefix = new_prefix()
        create_topics(bootstrap_ or bootstrap, prefix)
        stack = Stack(base / prefix, bootstrap_ or bootstrap, prefix, profile_ or profile, **kw)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.stop()
            print(stack.tails())


def kafka_records(stack: Stack) -> dict[str, list[Any]]:
    """Every record of every querytrail topic of ``stack``: suffix -> confluent Messages."""
    from querytrail.publishing import read_topic

    return {suffix: list(read_topic(stack.settings, suffix, timeout=60)) for suffix in TOPICS}


def decoded(messages: list[Any]) -> list[Any]:
    """The events among ``messages`` (undecodable records skipped)."""
    out = []
    for msg in messages:
        try:
            out.append(CODEC.decode(msg.value() or b""))
        except DecodeError:
            continue
    return out


def events(stack: Stack, suffix: str, request_id: str | None = None) -> list[Any]:
    """The events on one topic (garbage that other tests put there is skipped)."""
    from querytrail.publishing import read_topic

    out = decoded(list(read_topic(stack.settings, suffix, timeout=60)))
    return [e for e in out if request_id is None or e.request_id == request_id]


def wait_for(
    stack: Stack, suffix: str, match: Callable[[Any], bool], timeout: float = 30.0, count: int = 1
) -> list[Any]:
    """Poll a topic until ``count`` events match (garbage-tolerant ``pipeline_events.wait_for``)."""
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        found = [e for e in events(stack, suffix) if match(e)]
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"{count} matching event(s) on {suffix} not seen in {timeout}s (saw {len(found)})")


def iceberg_rows(stack: Stack, fields: tuple[str, ...] = ("topic", "partition", "offset")) -> Any:
    """The audit table as an Arrow table of ``fields`` (empty when it does not exist yet)."""
    from pyiceberg.exceptions import NoSuchTableError

    from sinks.table import open_table

    try:
        return open_table(stack.settings).scan(selected_fields=fields).to_arrow()
    except NoSuchTableError:
        return None


def iceberg_keys(stack: Stack) -> Counter[tuple[str, int, int]]:
    rows = iceberg_rows(stack)
    if rows is None:
        return Counter()
    return Counter(
        zip(rows["topic"].to_pylist(), rows["partition"].to_pylist(), rows["offset"].to_pylist(), strict=True)
    )


def wait_iceberg(stack: Stack, expected: set[tuple[str, int, int]], timeout: float = 180.0) -> Counter[Any]:
    """Poll the table until every expected (topic, partition, offset) is in it; returns the keys."""
    deadline = time.monotonic() + timeout
    keys: Counter[Any] = Counter()
    while time.monotonic() < deadline:
        try:
            keys = iceberg_keys(stack)
        except Exception as exc:  # the sink may be creating the catalog's tables right now
            if "already exists" not in str(exc) and "locked" not in str(exc):
                raise
        if expected <= set(keys):
            return keys
        time.sleep(1.0)
    return keys
