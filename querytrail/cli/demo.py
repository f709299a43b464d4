"""``querytrail demo``: a CI service account's day, told by the local stack in about a minute.

The demo starts the local stack the way ``querytrail up`` does (or reuses it), with the dev
issuer trusted and a demo policy derived from ``infra/policies/example.yaml`` whose costly-scan
approvals expire after a few seconds. It then plays each step through the public interfaces
(the CI client, an approver's ApprovalVerdict as ``querytrail approve`` sends it, the HTTP
ingress, the audit log's verify and reports) and prints one line per step: ``✓`` when querytrail
behaved as it promises, ``✗`` when not. Exit code 0 only when every step passed.

Every run uses fresh request ids, so running it twice works and the second run reuses the stack.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEMO_OVERRIDES", "demo_config", "demo_policy", "ensure_stack", "register"]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = ROOT / "infra" / "policies" / "example.yaml"
DEMO_CATALOG = ROOT / "infra" / "catalog" / "demo.yaml"

# What the demo needs from the services' settings (merged into the user's config, if any).
DEMO_OVERRIDES: dict[str, Any] = {
    "identity": {"dev_issuer_enabled": True},  # tokens come from `querytrail token`'s dev issuer
    "worker": {"expiry_check_s": 0.5},  # so the costly scan's approval visibly expires
}


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="play the querytrail story on the local stack (starts it if needed)")
    p.add_argument("--wait", type=float, default=90.0, help="seconds each step may take (default 90)")
    p.add_argument("--ttl", type=int, default=6, help="approval ttl of the costly scan, seconds (default 6)")
    p.set_defaults(func=_demo)


def demo_policy(ttl_s: int) -> dict[str, Any]:
    """The example policy, with short approvals for costly scans and no nightly window.

    The nightly-privileged rule is dropped so the privileged step behaves the same at any hour.
    """
    policy = yaml.safe_load(EXAMPLE_POLICY.read_text(encoding="utf-8"))
    rules = [r for r in policy["rules"] if r["id"] != "nightly-privileged"]
    for rule in rules:
        if rule["id"] in ("costly", "risky-shape"):
            rule["then"]["require_approval"]["ttl"] = f"{ttl_s}s"
    policy["rules"] = rules
    return dict(policy)


def demo_config(demo_dir: Path, ttl_s: int) -> Path:
    """Write the demo's policy and config (the user's QUERYTRAIL_CONFIG plus DEMO_OVERRIDES)."""
    demo_dir.mkdir(parents=True, exist_ok=True)
    policy_path = demo_dir / "policy.yaml"
    header = f"# querytrail demo policy: {EXAMPLE_POLICY.name} with {ttl_s}s costly-scan approvals\n"
    policy_path.write_text(header + yaml.safe_dump(demo_policy(ttl_s), sort_keys=False), encoding="utf-8")
    data: dict[str, Any] = {}
    user = os.environ.get("QUERYTRAIL_CONFIG")
    if user and Path(user).name != "stack.yaml" and Path(user).resolve() != (demo_dir / "config.yaml"):
        data = yaml.safe_load(Path(user).read_text(encoding="utf-8")) or {}
    for key, value in DEMO_OVERRIDES.items():
        data.setdefault(key, {}).update(value)
    data["policy_path"] = str(policy_path)
    data.setdefault("catalog_path", str(DEMO_CATALOG))  # table sizes for the cost estimate
    path = demo_dir / "config.yaml"
    path.write_text("# written by `querytrail demo`\n" + yaml.safe_dump(data), encoding="utf-8")
    return path


def _matches(stack_yaml: Path, config: Path) -> bool:
    """Whether the running stack was started with the demo's settings."""
    try:
        running = yaml.safe_load(stack_yaml.read_text(encoding="utf-8")) or {}
        wanted = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except OSError:
        return False
    return all(running.get(k) == wanted.get(k) for k in ("identity", "worker", "policy_path", "catalog_path"))


def ensure_stack(ttl_s: int, say: Callable[[str], None]) -> Any:
    """Start (or reuse) the local stack with the demo's settings; the Settings the services read."""
    from infra.commands import up
    from infra.kafka import stop_process
    from infra.stack import SERVICES, StackState
    from querytrail.settings import Settings

    base = Settings()
    config = demo_config(base.home / "demo", ttl_s)
    state = StackState.load(base.run_dir)
    services = [s.name for s in SERVICES if state.alive(s.name)]
    if services and not _matches(base.run_dir / "stack.yaml", config):
        # The services run with other settings (no dev issuer, another policy): restart only them.
        say(f"restarting {', '.join(services)} with the demo's settings (Kafka and fakesnow stay up)")
        for name in reversed(services):
            stop_process(int(state.services[name]["pid"]), timeout=30.0, name=name)
            state.services.pop(name, None)
        state.save()
    os.environ["QUERYTRAIL_CONFIG"] = str(config)
    t0 = time.monotonic()
    _, started = up(Settings())
    if started:
        say(f"started {', '.join(started)} in {time.monotonic() - t0:.0f}s (home {base.home})")
    os.environ["QUERYTRAIL_CONFIG"] = str(base.run_dir / "stack.yaml")
    return Settings()


def _demo(args: argparse.Namespace) -> int:
    with_reconfigure = getattr(sys.stdout, "reconfigure", None)
    if with_reconfigure is not None:
        with_reconfigure(errors="replace", line_buffering=True)
    t0 = time.monotonic()
    say = lambda text: print(f"  · {text}")  # noqa: E731
    print("querytrail demo: a CI service account's queries, held, masked, approved, denied and audited")
    try:
        from querytrail.cli.demo_story import Demo

        settings = ensure_stack(args.ttl, say)
        demo = Demo(settings, args.wait)
    except Exception as exc:
        print(f"✗ local stack: {exc}")
        return 1
    print(f"✓ local stack: Kafka {settings.kafka.bootstrap_servers}, worker, executor, sink, ingress")
    reports: list[str] = []
    steps: list[tuple[str, Callable[[], str]]] = [
        ("safe analytics query", demo.safe_query),
        ("SSNs through a CTE", demo.ssn_through_cte),
        ("privileged read of SECURITY.ADMIN.USERS", demo.privileged_held),
        ("self-approval attempt", demo.self_approval),
        ("second identity approves", demo.approved),
        ("costly full scan of ANALYTICS.PUBLIC.ORDERS", demo.costly_expires),
        ("DROP TABLE", demo.drop_table),
        ("expired token", demo.expired_token),
        ("downstream action report", demo.action_report),
        ("audit log verify", demo.audit_log),
        ("report pii-exposure", lambda: demo.report(
            "pii-exposure", ["request_id", "subject", "exposure", "masked_columns", "rows_returned"],
            "cte", reports.append)),
        ("report privileged-access", lambda: demo.report(
            "privileged-access", ["request_id", "subject", "service_account", "executed", "decision", "outcome"],
            "privileged", reports.append)),
        ("report costly-scans", lambda: demo.report(
            "costly-scans", ["request_id", "subject", "full_table_scan", "estimated_bytes", "decision", "prompt"],
            "costly", reports.append)),
        ("MCP agent session", demo.mcp_session),
    ]  # fmt: skip
    failed = 0
    for i, (name, step) in enumerate(steps, 1):
        started = time.monotonic()
        try:
            detail, ok = step(), True
        except Exception as exc:  # one broken step must not hide the others' results
            detail, ok = f"{type(exc).__name__}: {exc}"[:400], False
            if not isinstance(exc, AssertionError):
                traceback.print_exc(file=sys.stderr)
        failed += not ok
        print(f"{'✓' if ok else '✗'} {i:>2}. {name}: {detail} ({time.monotonic() - started:.1f}s)")
        if reports:
            print("\n".join("      " + line for line in reports.pop().splitlines()))
    if demo.held is not None:
        demo.held.close()
    total = time.monotonic() - t0
    if failed:
        print(f"demo FAILED: {failed} of {len(steps)} steps did not behave as expected ({total:.0f}s)")
        return 1
    print(f"demo passed: all {len(steps)} steps behaved as expected in {total:.0f}s")
    print(
        "next: `querytrail replay REQUEST_ID`, `querytrail query \"SELECT ...\"`, README.md 'Where to look next'"
    )
    return 0
