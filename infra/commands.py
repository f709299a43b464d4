"""``querytrail up`` / ``down`` / ``status``: the local stack (Kafka, topics, fakesnow, services).

Exit codes: 0 success (``status``: everything runs), 1 failure (``status``: not, or only partly,
running). Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from querytrail.kafka_clients import consumer_groups, consumer_lag
from schemas.events import envelope

if TYPE_CHECKING:
    from infra.stack import StackState
    from querytrail.settings import Settings

__all__ = [
    "down",
    "health",
    "register",
    "smoke",
    "status",
    "up",
]

log = logging.getLogger(__name__)

KAFKA, FAKESNOW, KEYCLOAK = "kafka", "fakesnow", "keycloak"
OPTIONAL = (KEYCLOAK,)  # started only when named with --with


def register(sub: Any) -> None:
    p = sub.add_parser("up", help="start the local stack: Kafka, topics, fakesnow (seeded), services")
    p.add_argument("--json", action="store_true", help="print the endpoints as JSON")
    p.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated services to start (default: all), e.g. kafka,fakesnow",
    )
    p.add_argument(
        "--with",
        dest="with_",
        metavar="NAMES",
        help=f"comma-separated optional services to start too: {', '.join(OPTIONAL)}",
    )
    p.set_defaults(func=_up)
    p = sub.add_parser("down", help="stop everything `querytrail up` started")
    p.set_defaults(func=_down)
    p = sub.add_parser("status", help="what the local stack runs, and its endpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)
    p = sub.add_parser("smoke", help="check the running stack: an event through Kafka, a query on fakesnow")
    p.set_defaults(func=_smoke)


def _settings() -> Settings:
    from querytrail.settings import Settings

    return Settings()


def _stack_yaml(
    settings: Settings, bootstrap: str, fakesnow_port: int, keycloak_issuer: str | None = None
) -> Path:
    """Write home/run/stack.yaml: the user's config file (if any) plus the local endpoints."""
    import yaml

    from infra.fakesnow_server import ACCOUNT, PASSWORD, USER

    data: dict[str, Any] = {}
    user_config = os.environ.get("QUERYTRAIL_CONFIG")
    if user_config and Path(user_config).resolve() != (settings.run_dir / "stack.yaml").resolve():
        data = yaml.safe_load(Path(user_config).read_text(encoding="utf-8")) or {}
    data["home"] = str(settings.home)
    data.setdefault("kafka", {})["bootstrap_servers"] = bootstrap
    profiles = data.setdefault("snowflake_profiles", {})
    profiles[settings.default_target] = {
        "account": ACCOUNT,
        "user": USER,
        "password": PASSWORD,
        "host": "127.0.0.1",
        "port": fakesnow_port,
        "protocol": "http",
        "database": "ANALYTICS",
        "schema": "PUBLIC",
    }
    if keycloak_issuer:
        # trusted next to the dev issuer (and any issuer of the user's config)
        from infra.keycloak import issuer_settings

        issuers = data.setdefault("identity", {}).setdefault("issuers", [])
        issuers[:] = [i for i in issuers if i.get("issuer") != keycloak_issuer]
        issuers.append(issuer_settings(keycloak_issuer).model_dump(mode="json"))
    path = settings.run_dir / "stack.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by `querytrail up`; removed by `querytrail down`\n" + yaml.safe_dump(data))
    return path


def up(
    settings: Settings, only: set[str] | None = None, with_: set[str] | None = None
) -> tuple[StackState, list[str]]:
    """Start whatever of the stack is not running; (state, names of the services started now).

    ``only`` limits the registered services started after Kafka and fakesnow (which always run);
    ``with_`` names optional services (``OPTIONAL``: keycloak) to start as well.
    """
    from infra.fakesnow_server import FakesnowServer, connect_kwargs
    from infra.kafka import KafkaBroker
    from infra.seed import seed
    from infra.stack import PREPARE, SERVICES, StackState, spawn
    from infra.topics import create_topics

    state = StackState.load(settings.run_dir)
    started: list[str] = []
    local = settings.local
    try:
        if not state.alive(KAFKA):
            broker = KafkaBroker(
                settings.home, local.kafka_port, local.kafka_controller_port, local.kafka_version,
                heap=local.kafka_heap, java_home=local.java_home, jar_cache=local.jar_cache,
                partitions=settings.kafka.partitions,
            )  # fmt: skip
            broker.start(timeout=local.kafka_startup_timeout_s)
            assert broker.pid is not None
            state.record(KAFKA, broker.pid, broker.bootstrap, broker.log_path)
            started.append(KAFKA)
        bootstrap = state.services[KAFKA]["endpoint"]
        create_topics(bootstrap, settings.kafka.topic_prefix, settings.kafka.partitions, settings)

        if not state.alive(FAKESNOW):
            fs = FakesnowServer(settings.home, local.fakesnow_port)
            fs.start(timeout=local.fakesnow_startup_timeout_s)
            assert fs.pid is not None
            state.record(FAKESNOW, fs.pid, fs.url, fs.log_path)
            started.append(FAKESNOW)
        seed(connect_kwargs(local.fakesnow_port))

        issuer = None
        if KEYCLOAK in (with_ or set()) or KEYCLOAK in state.services:
            if not state.alive(KEYCLOAK):
                from infra.keycloak import Keycloak

                kc = Keycloak(
                    settings.home,
                    local.keycloak_port,
                    java_home=None,
                    jar_cache=local.jar_cache or settings.home / "cache",
                )
                kc.start(timeout=local.keycloak_startup_timeout_s)
                assert kc.pid is not None
                state.record(KEYCLOAK, kc.pid, kc.issuer, kc.log_path)
                started.append(KEYCLOAK)
            issuer = state.services[KEYCLOAK]["endpoint"]
        stack_yaml = _stack_yaml(settings, bootstrap, local.fakesnow_port, issuer)
        os.environ["QUERYTRAIL_CONFIG"] = str(stack_yaml)  # the services read the same settings
        from querytrail.settings import Settings as _Settings

        svc_settings = _Settings()
        env = {"QUERYTRAIL_CONFIG": str(stack_yaml), "QUERYTRAIL_HOME": str(settings.home)}
        for prepare in PREPARE:
            prepare(svc_settings)
        for svc in SERVICES:
            if state.alive(svc.name) or (only is not None and svc.name not in only):
                continue
            if svc.enabled is not None and not svc.enabled(svc_settings):
                continue
            pid, svc_log = spawn(svc, svc_settings, env, settings.run_dir / "logs")
            endpoint = svc.endpoint(svc_settings) if svc.endpoint else None
            state.record(svc.name, pid, endpoint, svc_log)
            started.append(svc.name)
    except BaseException:
        # leave nothing half-started behind: stop what this call started
        _stop(state, started)
        raise
    return state, started


def _stop(state: StackState, names: list[str]) -> None:
    from infra.kafka import stop_process

    for name in reversed(names):
        svc = state.services.get(name)
        if svc and state.alive(name):
            stop_process(int(svc["pid"]), timeout=30.0, name=name)
        state.services.pop(name, None)
    state.save()


def down(settings: Settings) -> list[str]:
    """Stop every process of the stack (services, fakesnow, Kafka); the names stopped."""
    from infra.stack import StackState

    state = StackState.load(settings.run_dir)
    names = list(state.services)  # insertion order is start order
    running = [n for n in names if state.alive(n)]
    _stop(state, names)
    state.path.unlink(missing_ok=True)
    (settings.run_dir / "stack.yaml").unlink(missing_ok=True)
    return running


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """name -> {running, pid, endpoint, log} for every process ``up`` recorded."""
    from infra.stack import StackState

    state = StackState.load(settings.run_dir)
    return {name: {"running": state.alive(name), **info} for name, info in state.services.items()}


def health(settings: Settings, services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``services`` plus, per process: health (URL or port check), metrics URL, consumer group lag.

    healthy is None when nothing beyond "the pid is alive" can be checked.
    """
    from infra.stack import SERVICES, http_ok, port_open
    from querytrail.observability import SERVICE_PORT_OFFSETS

    checks = {svc.name: svc.health for svc in SERVICES}
    groups = consumer_groups(settings)
    lags = consumer_lag(settings, list(groups.values()))
    out: dict[str, dict[str, Any]] = {}
    for name, info in services.items():
        info = dict(info)
        healthy: bool | None = None
        if name == KAFKA:
            healthy = port_open(settings.local.kafka_port)
        elif name == FAKESNOW:
            healthy = port_open(settings.local.fakesnow_port)
        elif checks.get(name) is not None:
            healthy = bool(checks[name](settings))  # type: ignore[misc]
        if name in SERVICE_PORT_OFFSETS:
            url = f"http://{settings.metrics_host}:{settings.metrics_port_base + SERVICE_PORT_OFFSETS[name]}/metrics"
            info["metrics"] = {"url": url, "ok": http_ok(url)}
            healthy = info["metrics"]["ok"] if healthy is None else healthy and info["metrics"]["ok"]
        info["healthy"] = bool(info["running"]) and healthy if healthy is not None else None
        if name in groups:
            info["consumer_group"] = groups[name]
            info["lag"] = lags.get(groups[name])
        out[name] = info
    return out


def _print_endpoints(services: dict[str, dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(services, indent=2))
        return
    for name, info in services.items():
        state = "running" if info.get("running", True) else "NOT RUNNING"
        endpoint = info.get("endpoint") or "-"
        print(f"  {name:<10} {state:<11} {endpoint:<28} pid {info['pid']}  log {info['log']}")


def _up(args: argparse.Namespace) -> int:
    from infra.kafka import KafkaInfraError
    from infra.topics import TopicCreationError

    settings = _settings()
    t0 = time.monotonic()
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    with_ = {n.strip() for n in args.with_.split(",") if n.strip()} if args.with_ else set()
    unknown = with_ - set(OPTIONAL)
    if unknown:
        print(
            f"querytrail up: unknown --with {sorted(unknown)}; optional services: {', '.join(OPTIONAL)}",
            file=sys.stderr,
        )
        return 2
    try:
        _, started = up(settings, only, with_)
    except (KafkaInfraError, TopicCreationError) as exc:
        print(f"querytrail up failed: {exc}", file=sys.stderr)
        return 1
    now = status(settings)
    if not args.json:
        if not started:
            print(f"the querytrail stack is already running (home {settings.home}):")
        else:
            print(f"querytrail stack up in {time.monotonic() - t0:.1f}s (started: {', '.join(started)}):")
    _print_endpoints(now, args.json)
    if not args.json:
        print(
            f"settings for other commands: {settings.run_dir / 'stack.yaml'}  (stop with `querytrail down`)"
        )
    return 0


def _down(args: argparse.Namespace) -> int:
    settings = _settings()
    stopped = down(settings)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = _settings()
    services = status(settings)
    if not services:
        print(json.dumps({}) if args.json else "the querytrail stack is not running")
        return 1
    services = health(settings, services) if services.get(KAFKA, {}).get("running") else services
    if not args.json:
        print("querytrail stack:")
    _print_endpoints(services, args.json)
    if not args.json:
        _print_health(services)
    return 0 if all(s["running"] and s.get("healthy") is not False for s in services.values()) else 1


def _print_health(services: dict[str, dict[str, Any]]) -> None:
    print("health:")
    for name, info in services.items():
        ok = {True: "healthy", False: "UNHEALTHY", None: "alive" if info["running"] else "DOWN"}[
            info.get("healthy")
        ]
        metrics = info.get("metrics")
        shown = f"  metrics {metrics['url']} {'ok' if metrics['ok'] else 'unreachable'}" if metrics else ""
        print(f"  {name:<10} {ok:<10}{shown}")
    lagging = [(n, i) for n, i in services.items() if "consumer_group" in i]
    if lagging:
        print("consumer lag (messages behind the log end):")
    for name, info in lagging:
        lag = info.get("lag")
        text = ", ".join(f"{t} {n}" for t, n in sorted(lag.items())) if lag else "no committed offsets yet"
        print(f"  {name:<10} group {info['consumer_group']}: {text if lag is not None else 'unknown'}")


def smoke(settings: Settings) -> list[str]:
    """One QueryRequested through a throwaway topic and back, and a query on the demo warehouse.

    The throwaway topic (``<prefix>.smoke-<uuid>``, deleted afterwards) keeps the check out of
    the audit log. Returns what was checked; raises on the first failure.
    """
    import uuid

    import snowflake.connector
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from querytrail.kafka_clients import make_consumer, make_producer, poll_messages, produce_sync
    from schemas.codec import EventCodec, key_for
    from schemas.topics import WITNESS, topic_names

    done: list[str] = []
    kafka = settings.kafka
    conf: dict[str, Any] = {**kafka.confluent_config(), "logger": logging.getLogger("querytrail.rdkafka")}
    admin = AdminClient(conf)
    existing = admin.list_topics(timeout=15).topics
    wanted = [*topic_names(kafka.topic_prefix).values(), WITNESS.name(kafka.topic_prefix)]
    missing = [t for t in wanted if t not in existing]
    if missing:
        raise RuntimeError(f"topics missing on {kafka.bootstrap_servers}: {missing} (run `querytrail up`)")
    done.append(f"kafka {kafka.bootstrap_servers}: the {len(wanted)} querytrail topics exist")

    topic = f"{kafka.topic_prefix}.smoke-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, kafka.replication_factor)])[topic].result(15)
    try:
        codec = EventCodec(kafka.schema_registry_url)
        event = _smoke_event()
        produce_sync(make_producer(kafka), topic, codec.encode(event), key=key_for(event), timeout=15)
        consumer = make_consumer(kafka, group_id=f"smoke-{uuid.uuid4()}")
        try:
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            (msg,) = poll_messages(consumer, 1, timeout=15)
        finally:
            consumer.close()
        if codec.decode(msg.value() or b"") != event:
            raise RuntimeError("the event read back differs from the event produced")
        done.append(f"kafka: QueryRequested {event.request_id} produced, consumed and decoded")
    finally:
        admin.delete_topics([topic])[topic].result(15)

    profile = settings.snowflake_profiles.get(settings.default_target)
    if profile is None:
        raise RuntimeError(f"no snowflake profile {settings.default_target!r} (run `querytrail up`)")
    with snowflake.connector.connect(
        account=profile.account, user=profile.user, host=profile.host, port=profile.port,
        protocol=profile.protocol, password=profile.password.get_secret_value() if profile.password else None,
        login_timeout=profile.login_timeout_s, network_timeout=profile.network_timeout_s,
    ) as conn:  # fmt: skip
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM ANALYTICS.PUBLIC.CUSTOMERS")
        row = cur.fetchone()
    done.append(
        f"snowflake {profile.host}:{profile.port}: ANALYTICS.PUBLIC.CUSTOMERS has {row[0] if row else 0} rows"
    )
    return done


def _smoke_event() -> Any:
    """A QueryRequested carrying no credential worth anything (it only travels the smoke topic)."""
    import hashlib

    from schemas.events import (
        ClientContext,
        Credential,
        QueryRequested,
        Target,
        new_event_id,
    )

    return QueryRequested(
        **envelope(f"smoke-{new_event_id()}", "cli"),
        prompt="smoke check: count the customers",
        model="none",
        sql="SELECT COUNT(*) FROM ANALYTICS.PUBLIC.CUSTOMERS",
        target=Target(profile="analytics"),
        context=ClientContext(ci_provider="local"),
        credential=Credential(token_sha256=hashlib.sha256(b"smoke").hexdigest()),
    )


def _smoke(args: argparse.Namespace) -> int:
    try:
        for line in smoke(_settings()):
            print(f"ok  {line}")
    except Exception as exc:  # report any failure as a failed check, not a traceback
        print(f"smoke check failed: {exc}", file=sys.stderr)
        return 1
    print("smoke checks passed")
    return 0
