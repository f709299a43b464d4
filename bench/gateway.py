"""Latency of the same query: direct to Snowflake, through the whole pipeline, and one Kafka hop;
then a sustained rate through the pipeline.

    /work/venv/bin/python bench/gateway.py [--n 50] [--rate 100] [--seconds 60] [--bootstrap HOST:PORT]

Starts what it needs on this machine (a Kafka 4.x broker unless --bootstrap names one, a seeded
fakesnow server, the worker and the executor as separate processes, as ``querytrail up`` does).

- direct: snowflake-connector-python, ``connect()`` + execute + fetch per query (what the
  executor does per request, since QUERY_TAG is a per-session setting), and execute + fetch on
  one open connection.
- direct, rewritten: the statement the executor actually sends (the policy masks EMAIL), on an
  open connection: the emulator compiles the masking expression with sqlglot on this machine,
  which a Snowflake account does in its cloud services layer.
- one hop: produce (acks=all) -> consume of one record, confluent-kafka both sides.
- pipeline: QueryRequested produced -> QueryCompleted + pages consumed, through worker and
  executor (3 hops on the critical path: requests, executions, results).

- signing: what Ed25519 signing and verifying every record of one request costs (the services
  sign each record they publish, every reader verifies it: docs/security.md), printed beside
  the pipeline's p50; ``--signing-only`` measures it alone over typical record sizes.

Prints p50/p99 of each, and the pipeline's added latency (pipeline - direct) as a multiple of
(hops x one hop), against both direct figures. The sustained phase also prints the emulator's own
ceiling (the rewritten statement sent directly from as many threads as the executor uses) and
the CPU each process spent per request, since every service shares this machine's cores. Issue 5's targets: added p50 <= 2 x that floor; >= 100 audited requests/s for
60 s with nothing lost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "pipeline"))  # the pipeline harness the tests use
CATALOG = ROOT / "infra" / "catalog" / "demo.yaml"

SQL = "SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID <= 10"
HOPS = 3
LAST_RID: list[str] = []  # the request ids bench_pipeline sent, in order


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def show(name: str, values: list[float]) -> tuple[float, float]:
    p50, p99 = pct(values, 0.5), pct(values, 0.99)
    print(f"{name:<34} n={len(values):<5} p50={p50 * 1000:8.1f} ms  p99={p99 * 1000:8.1f} ms")
    return p50, p99


def bench_direct(profile: Any, n: int) -> tuple[list[float], list[float]]:
    from processors.executor.runner import connect

    per_connect: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        conn = connect(profile, {"QUERY_TAG": "bench"})
        cur = conn.cursor()
        cur.execute(SQL)
        cur.fetchall()
        conn.close()
        per_connect.append(time.perf_counter() - t)
    return per_connect, bench_statement(profile, SQL, n)


def rewritten_sql(p: Any) -> str:
    """The statement the executor runs for SQL: the decision engine's rewrite under the test policy."""
    from processors.decision.policy import IdentityClaims, load_policy
    from processors.decision.statement import evaluate
    from processors.decision.warehouse_catalog import Catalog
    from schemas.events import utcnow

    claims = {"sub": "ci-bot", "iss": "bench", "groups": ["ci"]}
    decision = evaluate(
        SQL, IdentityClaims.from_claims(claims), Catalog.load(CATALOG), load_policy(p.policy_path), utcnow()
    )
    assert decision.decision == "allow" and decision.rewritten_sql, decision
    return decision.rewritten_sql


def bench_statement(profile: Any, sql: str, n: int) -> list[float]:
    """One statement on one open connection, n times."""
    from processors.executor.runner import connect

    conn = connect(profile, {})
    cur = conn.cursor()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        cur.execute(sql)
        cur.fetchall()
        out.append(time.perf_counter() - t)
    conn.close()
    return out


def emulator_ceiling(profile: Any, sql: str, threads: int, seconds: float = 5.0) -> float:
    """Statements/s the warehouse endpoint serves to ``threads`` open connections (nothing else running)."""
    import threading

    from processors.executor.runner import connect

    conns = [connect(profile, {}) for _ in range(threads)]
    done = [0] * threads
    stop_at = time.perf_counter() + seconds

    def run(i: int) -> None:
        cur = conns[i].cursor()
        while time.perf_counter() < stop_at:
            cur.execute(sql)
            cur.fetchall()
            done[i] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return sum(done) / elapsed


def _ticks(pid: int) -> int:
    """utime + stime of a process and its live descendants, in clock ticks (Linux /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += int(stats[current][11]) + int(stats[current][12])
        todo += children.get(current, [])
    return total


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {name: _ticks(pid) / tick for name, pid in pids.items()}
    t = os.times()
    out["bench client"] = t.user + t.system
    return out


def bench_hop(settings: Any, n: int) -> list[float]:
    from confluent_kafka import TopicPartition

    from querytrail.kafka_clients import make_consumer, make_producer

    topic = f"{settings.kafka.topic_prefix}.actions"  # an idle topic of this run's prefix
    producer = make_producer(settings.kafka, **{"linger.ms": 0})
    consumer = make_consumer(settings.kafka, f"bench-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(topic, p, -1) for p in range(settings.kafka.partitions)])  # -1: end
    consumer.poll(1.0)
    out = []
    for i in range(n):
        key = f"hop-{i}".encode()
        t = time.perf_counter()
        producer.produce(topic, value=b"x" * 200, key=key)
        producer.flush(10)
        while True:
            msg = consumer.poll(5.0)
            if msg is not None and msg.error() is None and msg.key() == key:
                break
        out.append(time.perf_counter() - t)
    consumer.close()
    return out


class Waiter:
    """One consumer on the results topic, collecting completion times by request id."""

    def __init__(self, settings: Any) -> None:
        from confluent_kafka import TopicPartition

        from querytrail.kafka_clients import make_consumer
        from schemas.codec import EventCodec

        self.codec = EventCodec()
        self.consumer = make_consumer(
            settings.kafka, f"bench-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 10}
        )
        topic = f"{settings.kafka.topic_prefix}.results"
        self.consumer.assign([TopicPartition(topic, p, -1) for p in range(settings.kafka.partitions)])
        self.consumer.poll(1.0)
        self.done: dict[str, tuple[float, str]] = {}

    def pump(self, timeout: float) -> None:
        msg = self.consumer.poll(timeout)
        while msg is not None:
            if msg.error() is None:
                event = self.codec.decode(msg.value() or b"")
                if event.event_type in ("QueryCompleted", "QueryFailed", "QueryRejected"):
                    self.done.setdefault(event.request_id, (time.perf_counter(), event.event_type))
            msg = self.consumer.poll(0)


def bench_pipeline(p: Any, n: int) -> list[float]:
    from ingress.client import QueryClient
    from querytrail.publishing import Publisher
    from schemas.events import ClientContext, Target

    client = QueryClient(p.settings)
    publisher = Publisher(p.settings, "bench")
    token = p.token("ci-bot", ("ci",), repository="acme/etl")
    waiter = Waiter(p.settings)
    out = []
    for _ in range(n):
        rid = f"bench-{uuid.uuid4()}"
        LAST_RID.append(rid)
        req = client.build_request(
            request_id=rid, prompt="bench", sql=SQL, model="bench", token=token,
            target=Target(profile="analytics"), context=ClientContext(),
        )  # fmt: skip
        t = time.perf_counter()
        publisher.publish([req])
        while rid not in waiter.done:
            waiter.pump(0.05)
        end, kind = waiter.done[rid]
        assert kind == "QueryCompleted", kind
        out.append(end - t)
    return out


def bench_rate(p: Any, rate: float, seconds: float, pids: dict[str, int]) -> None:
    from ingress.client import QueryClient
    from querytrail.publishing import Publisher
    from schemas.events import ClientContext, Target

    client = QueryClient(p.settings)
    publisher = Publisher(p.settings, "bench")
    token = p.token("ci-bot", ("ci",), repository="acme/etl")
    waiter = Waiter(p.settings)
    total = int(rate * seconds)
    sent: dict[str, float] = {}
    cpu_before = cpu_snapshot(pids)
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        while time.perf_counter() < due:
            waiter.pump(max(0.0, min(0.01, due - time.perf_counter())))
        rid = f"rate-{uuid.uuid4()}"
        req = client.build_request(
            request_id=rid, prompt="bench", sql=SQL, model="bench", token=token,
            target=Target(profile="analytics"), context=ClientContext(),
        )  # fmt: skip
        publisher.producer.produce(
            f"{p.prefix}.requests", value=publisher.codec.encode(req), key=rid.encode()
        )
        publisher.producer.poll(0)
        sent[rid] = time.perf_counter()
    publisher.producer.flush(30)
    produced_in = time.perf_counter() - start
    # Drain: keep waiting while outcomes still arrive; "lost" is what never arrives (30 s idle).
    idle_since, seen = time.perf_counter(), 0
    while seen < total and time.perf_counter() - idle_since < 30.0:
        waiter.pump(0.2)
        now_seen = sum(1 for r in sent if r in waiter.done)
        if now_seen != seen:
            seen, idle_since = now_seen, time.perf_counter()
    cpu_after = cpu_snapshot(pids)
    finished = [waiter.done[r] for r in sent if r in waiter.done]
    completed = sum(1 for _, kind in finished if kind == "QueryCompleted")
    last = max((t for t, _ in finished), default=start)
    print(
        f"sustained: offered {total} at {rate:g}/s over {produced_in:.1f}s; outcomes {len(finished)}/{total} "
        f"(completed {completed}), lost {total - len(finished)}; drained after {last - start:.0f}s; "
        f"end-to-end throughput {len(finished) / max(1e-9, last - start):.1f}/s"
    )
    spent = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    per = ", ".join(f"{name} {1000 * v / max(1, len(finished)):.1f}" for name, v in spent.items())
    print(
        f"CPU per request (ms): {per}; total {1000 * sum(spent.values()) / max(1, len(finished)):.1f} ms "
        f"on {os.cpu_count()} cores"
    )


# Who verifies each signed topic's records (docs/security.md): the sink always, plus its readers.
VERIFIERS = {"decisions": 3, "executions": 2, "results": 3, "catalog": 2, "actions": 1}
# Typical sizes (bytes) of one allowed request's signed records, when no pipeline ran (--signing-only).
TYPICAL = [("decisions", 900), ("executions", 1100), ("executions", 400), ("results", 700), ("results", 1500)]


def request_records(p: Any, rid: str) -> list[tuple[str, bytes]]:
    """(topic suffix, exact bytes) of every signed record one request produced."""
    from querytrail.publishing import read_topic

    out = []
    for suffix in ("decisions", "executions", "results"):
        for msg in read_topic(p.settings, suffix, timeout=60):
            if msg.key() == rid.encode():
                out.append((suffix, msg.value() or b""))
    return out


def signing_cost(records: list[tuple[str, int | bytes]], rounds: int = 2000) -> tuple[float, float, int, int]:
    """Ed25519 sign (once per record) and verify (once per reader) of one request's records:
    (seconds signing, seconds verifying, signatures, verifications) per request, the median of
    ``rounds`` repetitions, with the same code the services run (querytrail.keys). CPU time
    (``time.process_time``), so cores shared with the services under test do not inflate it."""
    import statistics

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from querytrail.keys import EventSigner, EventVerifier

    key = Ed25519PrivateKey.generate()
    signer = EventSigner(key, "bench")
    values = [(f"qt.{t}", v if isinstance(v, bytes) else os.urandom(v)) for t, v in records]
    verifier = EventVerifier({t: [key.public_key()] for t, _ in values})
    signing, verifying = [], []
    for _ in range(rounds):
        t0 = time.process_time()
        signed = [(t, v, signer.headers(t, v)) for t, v in values]
        t1 = time.process_time()
        for t, v, h in signed:
            for _ in range(VERIFIERS[t.split(".", 1)[1]]):
                verifier.verify(t, v, h)
        t2 = time.process_time()
        signing.append(t1 - t0)
        verifying.append(t2 - t1)
    verifies = sum(VERIFIERS[t.split(".", 1)[1]] for t, _ in values)
    return statistics.median(signing), statistics.median(verifying), len(values), verifies


def show_signing(records: list[tuple[str, int | bytes]], total_p50: float | None) -> None:
    sign, verify, n_sign, n_verify = signing_cost(records)
    sizes = [len(v) if isinstance(v, bytes) else v for _, v in records]
    line = (
        f"signing {n_sign} records ({min(sizes)}-{max(sizes)} B) + {n_verify} verifications per request (CPU): "
        f"sign {sign * 1e6:.0f} us + verify {verify * 1e6:.0f} us = {(sign + verify) * 1000:.3f} ms "
        f"({sign / n_sign * 1e6:.0f} us per signature, {verify / n_verify * 1e6:.0f} us per verification)"
    )
    if total_p50 is not None:
        line += f" of the pipeline's p50 {total_p50 * 1000:.1f} ms ({(sign + verify) / total_p50:.1%})"
    print(line)
    # the readers verify in parallel, in their own processes: what a request waits for is every
    # signature and one verification per record (the next hop's)
    path = sign + n_sign * verify / n_verify
    line = f"  on a request's critical path: {path * 1000:.3f} ms"
    if total_p50 is not None:
        line += f" ({path / total_p50:.1%} of the pipeline's p50)"
    print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument(
        "--signing-only",
        action="store_true",
        help="only the Ed25519 cost per request, over typical record sizes (no stack started)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting of the worker and executor, e.g. kafka.fetch_wait_max_ms=500 (YAML value)",
    )
    args = ap.parse_args()
    if args.signing_only:
        show_signing(list(TYPICAL), None)
        return 0

    import yaml
    from pipeline_harness import Pipeline, new_prefix

    from infra.fakesnow_server import ACCOUNT, PASSWORD, USER, FakesnowServer, connect_kwargs
    from infra.seed import seed
    from infra.topics import create_topics
    from querytrail.settings import SnowflakeProfile

    home = Path(tempfile.mkdtemp(prefix="qt-bench-"))
    broker = None
    fakesnow = FakesnowServer(home / "fakesnow", _free())
    pipeline = None
    try:
        bootstrap = args.bootstrap
        if bootstrap is None:
            from infra.kafka import KafkaBroker

            broker = KafkaBroker(home / "broker", _free(), _free())
            broker.start(timeout=180)
            bootstrap = broker.bootstrap
        fakesnow.start(timeout=60)
        seed(connect_kwargs(fakesnow.port))
        profile = SnowflakeProfile(
            account=ACCOUNT, user=USER, password=PASSWORD, host="127.0.0.1", port=fakesnow.port,
            protocol="http", database="ANALYTICS", schema="PUBLIC", login_timeout_s=10, network_timeout_s=30,
        )  # fmt: skip
        prefix = new_prefix()
        create_topics(bootstrap, prefix)
        extra: dict[str, Any] = {}
        for item in args.set:
            dotted, _, value = item.partition("=")
            section, _, key = dotted.partition(".")
            extra.setdefault(section, {})[key] = yaml.safe_load(value)
        pipeline = Pipeline(home / "qt", bootstrap, prefix, profile, extra=extra)
        pipeline.start_all()
        bench_pipeline(pipeline, 5)  # warm-up: assignments, caches, first connections

        rewritten = rewritten_sql(pipeline)
        direct_conn, direct_warm = bench_direct(profile, args.n)
        direct_rewritten = bench_statement(profile, rewritten, args.n)
        hop = bench_hop(pipeline.settings, args.n)
        through = bench_pipeline(pipeline, args.n)
        print()
        print(f"statement the executor runs: {rewritten}")
        show("direct (connect+execute+fetch)", direct_conn)
        # the executor reuses open sessions, so the like-for-like direct figure is the warm one
        d50, _ = show("direct (open connection)", direct_warm)
        r50, _ = show("direct, rewritten statement", direct_rewritten)
        h50, _ = show("one Kafka hop (produce->consume)", hop)
        p50, _ = show("pipeline (request->completed)", through)
        last = bench_pipeline(pipeline, 1)  # one more request, whose records are measured below
        del last
        show_signing(request_records(pipeline, LAST_RID[-1]), p50)
        floor = HOPS * h50
        for label, base in (("direct on an open connection", d50), ("direct, rewritten statement", r50)):
            added = p50 - base
            print(
                f"added latency p50 = {added * 1000:.1f} ms (pipeline - {label}) = "
                f"{added / floor:.2f} x ({HOPS} hops x one hop = {floor * 1000:.1f} ms); target <= 2.00"
            )
        if not args.skip_rate:
            pids = {name: proc.pid for name, proc in pipeline.procs.items()}
            pids["fakesnow"] = fakesnow.pid or 0
            if broker is not None:
                pids["broker"] = broker.pid or 0
            threads = pipeline.settings.executor.concurrency
            ceiling = emulator_ceiling(profile, rewritten, threads)
            print(
                f"emulator ceiling: {ceiling:.1f} rewritten statements/s from {threads} open connections "
                "(the warehouse alone, nothing else running)"
            )
            bench_rate(pipeline, args.rate, args.seconds, pids)
    finally:
        if pipeline is not None:
            pipeline.stop()
        fakesnow.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
