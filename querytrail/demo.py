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
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEMO_OVERRIDES", "Demo", "demo_config", "demo_policy", "ensure_stack", "register"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = ROOT / "infra" / "policies" / "example.yaml"
DEMO_CATALOG = ROOT / "infra" / "catalog" / "demo.yaml"
CI_SUBJECT = "svc-etl-ci"
APPROVER_SUBJECT = "dana@acme.example"
_EMAIL_MASK = re.compile(r"^\*+@[\w.-]+$")

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


class Demo:
    """The story's steps; each returns a one-line explanation or raises AssertionError."""

    def __init__(self, settings: Any, wait_s: float) -> None:
        from ingress.client import QueryClient
        from schemas.codec import EventCodec

        self.settings = settings
        self.wait_s = wait_s
        self.client = QueryClient(settings)
        self.codec = EventCodec(settings.kafka.schema_registry_url)
        self.run_id = uuid.uuid4().hex[:8]
        self.started_at = datetime.now(UTC)
        self.ids: dict[str, str] = {}  # step -> request id
        self.held: Any = None  # the privileged read's submission while it waits for approval
        self.ci_token = self.token(CI_SUBJECT, ["ci"], repository="acme/etl", service_account=True)

    # -- helpers -------------------------------------------------------------------------------
    def token(
        self, sub: str, groups: list[str], ttl_s: int = 900, now: float | None = None, **claims: Any
    ) -> str:
        from ingress.devissuer import mint_token

        return mint_token(self.settings, sub=sub, groups=groups, claims=claims, ttl_s=ttl_s, now=now)

    def submit(self, step: str, sql: str, prompt: str, token: str | None = None) -> Any:
        from schemas.events import ClientContext, Target

        rid = f"demo-{self.run_id}-{step}"
        self.ids[step] = rid
        context = ClientContext(
            ci_provider="github-actions", repository="acme/etl", workflow="nightly-etl",
            run_id=self.run_id, commit=None, ref="refs/heads/main", actor=CI_SUBJECT, extra={},
        )  # fmt: skip
        return self.client.submit(
            token=token or self.ci_token, request_id=rid, prompt=prompt, sql=sql, model="claude-sonnet-4",
            target=Target(profile=self.settings.default_target), context=context,
        )  # fmt: skip

    def until(self, submission: Any, statuses: tuple[str, ...]) -> Any:
        deadline = time.monotonic() + self.wait_s
        while submission.outcome.status not in statuses and time.monotonic() < deadline:
            submission.wait(0.5)
        return submission.outcome

    def finish(self, submission: Any) -> Any:
        try:
            return submission.wait(self.wait_s)
        finally:
            submission.close()

    def verdict(self, request_id: str, statement_sha256: str, token: str) -> tuple[bool, str]:
        """Send an ApprovalVerdict as ``querytrail approve`` does; (accepted, reason) once judged."""
        from ingress.sealing import load_sealing_public_key, seal_token, token_sha256
        from processors.kafka_io import Publisher, read_topic
        from schemas.codec import DecodeError
        from schemas.events import (
            ApprovalVerdict,
            ApprovalVerdictRecorded,
            Credential,
            new_event_id,
            producer,
            utcnow,
        )

        sealed = seal_token(token, load_sealing_public_key(self.settings), request_id)
        event = ApprovalVerdict(
            event_id=new_event_id(), request_id=request_id, occurred_at=utcnow(), producer=producer("cli"),
            verdict="approve", statement_sha256=statement_sha256,
            credential=Credential(sealed_token=sealed, token_sha256=token_sha256(token)), comment="demo",
        )  # fmt: skip
        Publisher(self.settings, "cli", self.codec).publish([event])
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            for msg in read_topic(self.settings, "decisions"):
                if msg.key() != request_id.encode():
                    continue
                try:
                    judged = self.codec.decode(msg.value() or b"")
                except DecodeError:
                    continue
                if isinstance(judged, ApprovalVerdictRecorded) and judged.verdict_event_id == event.event_id:
                    return bool(judged.accepted), str(judged.reason)
            time.sleep(0.5)
        raise AssertionError(f"no judgement of the verdict within {self.wait_s:.0f}s")

    # -- the story -----------------------------------------------------------------------------
    def safe_query(self) -> str:
        sql = (
            "SELECT ID, EMAIL, CITY FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE COUNTRY = 'US' ORDER BY ID LIMIT 5"
        )
        out = self.finish(self.submit("safe", sql, "List five US customers with their email and city"))
        assert out.status == "completed", f"expected completed, got {out.status} {out.to_json()}"
        rows, cols = out.rows(), [c["name"] for c in out.completed["columns"]]
        emails = [r[cols.index("EMAIL")] if isinstance(r, list) else r["EMAIL"] for r in rows]
        assert rows and all(_EMAIL_MASK.match(str(e)) for e in emails), f"emails not masked: {emails}"
        return f"{len(rows)} rows returned, EMAIL masked by rule ci-reads-analytics (e.g. {emails[0]})"

    def ssn_through_cte(self) -> str:
        sql = (
            "WITH ids AS (SELECT ID, SSN AS tax_id FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE CITY = 'Austin') "
            "SELECT ID, tax_id FROM ids ORDER BY ID LIMIT 5"
        )
        out = self.finish(self.submit("cte", sql, "Get tax ids of Austin customers for the reconciliation"))
        assert out.status == "completed", f"expected completed, got {out.status}"
        values = [r[1] if isinstance(r, list) else r["TAX_ID"] for r in out.rows()]
        assert values and all(str(v).startswith("***-**-") for v in values), f"SSNs not masked: {values}"
        _no_seeded_pii(values)
        return f"SSN renamed through a CTE still masked (last4: {values[0]}); no raw SSN left Snowflake"

    def privileged_held(self) -> str:
        sql = "SELECT USERNAME, ROLE, MFA_ENABLED FROM SECURITY.ADMIN.USERS WHERE MFA_ENABLED = FALSE"
        self.held = self.submit("privileged", sql, "Which admins have MFA disabled?")
        out = self.until(self.held, ("awaiting_approval", "completed", "denied", "rejected", "failed"))
        assert out.status == "awaiting_approval", f"expected a hold, got {out.status}"
        return f"held by {out.approval['rule_id']} for {', '.join(out.approval['approver_groups'])}"

    def self_approval(self) -> str:
        assert self.held is not None, "no held request"
        out = self.held.outcome
        accepted, reason = self.verdict(out.request_id, out.approval["statement_sha256"], self.ci_token)
        assert not accepted and reason == "self_approval", f"expected refusal, got {accepted} {reason}"
        return f"{CI_SUBJECT} approving its own request: refused ({reason}), recorded in the audit log"

    def approved(self) -> str:
        assert self.held is not None, "no held request"
        out = self.held.outcome
        approver = self.token(APPROVER_SUBJECT, ["data-security"])
        accepted, reason = self.verdict(out.request_id, out.approval["statement_sha256"], approver)
        assert accepted, f"approval refused: {reason}"
        held, self.held = self.held, None
        out = self.finish(held)
        assert out.status == "completed", f"expected completed, got {out.status}"
        return f"{APPROVER_SUBJECT} (data-security) approved; {len(out.rows())} rows returned"

    def costly_expires(self) -> str:
        sub = self.submit("costly", "SELECT * FROM ANALYTICS.PUBLIC.ORDERS", "Show me all the orders")
        out = self.until(sub, ("awaiting_approval", "completed", "denied", "rejected", "failed"))
        assert out.status == "awaiting_approval", f"expected a hold, got {out.status}"
        findings = ", ".join(f["code"] for f in out.decision["findings"]) if out.decision else ""
        out = self.finish(sub)
        # ApprovalResolved (decisions topic) and QueryRejected (results topic) may arrive in either order
        state = (out.approval or {}).get("state")
        code = (out.rejected or {}).get("reason_code")
        expired = state == "expired" or code == "approval_expired"
        assert out.terminal and expired, f"expected expiry, got {out.status}/{state}/{code}"
        rules = "+".join((out.decision or {}).get("rules", []))
        return f"{findings} held by {rules}; nobody approved within the ttl, so it expired and never ran"

    def drop_table(self) -> str:
        out = self.finish(self.submit("drop", "DROP TABLE ANALYTICS.PUBLIC.ORDERS", "Clean up the orders"))
        # the deny (PolicyDecided) and its QueryRejected travel different topics: either may come first
        assert out.status in ("denied", "rejected"), f"expected denied, got {out.status}"
        if out.decision is not None:
            rules, reason = out.decision["rules"], "; ".join(out.decision["reasons"])
        else:
            rules, reason = out.rejected["rules"], out.rejected["reason"]
        assert "no-writes-from-ai" in rules, f"unexpected rules {rules}"
        return f"denied: {reason[:110]}"

    def expired_token(self) -> str:
        stale = self.token(CI_SUBJECT, ["ci"], ttl_s=600, now=time.time() - 7200, repository="acme/etl")
        out = self.finish(self.submit("expired", "SELECT 1", "ping", token=stale))
        assert out.status == "rejected", f"expected rejected, got {out.status}"
        code = out.rejected["reason_code"]
        assert code == "expired", f"expected reason expired, got {code}"
        return f"rejected at {out.rejected['stage']}: {code}"

    def action_report(self) -> str:
        import httpx

        ing = self.settings.ingress
        body: dict[str, Any] = {
            "request_id": self.ids.get("safe", f"demo-{self.run_id}-safe"),
            "action": "published_dashboard", "system": "looker", "row_count": 5,
            "details": {"dashboard": "us-customers", "run_id": self.run_id},
        }  # fmt: skip
        resp = httpx.post(
            f"http://{ing.host}:{ing.port}/v1/actions",
            json=body,
            headers={"Authorization": f"Bearer {self.ci_token}"},
            timeout=30,
        )
        assert resp.status_code == 202, f"ingress answered {resp.status_code}: {resp.text[:200]}"
        return "POST /v1/actions accepted (202): what the rows were used for joins the request's story"

    def audit_log(self) -> str:
        """Wait for the sink to land this run's events, then verify every chain and signature."""
        from schemas.codec import EventCodec
        from sinks.chain import load_verifier
        from sinks.consumer import witness_path
        from sinks.reports import load_events
        from sinks.table import open_table
        from sinks.verify import verify_table

        wanted = {
            ("safe", "DownstreamActionReported"), ("privileged", "QueryCompleted"),
            ("costly", "ApprovalResolved"), ("drop", "QueryRejected"), ("expired", "QueryRejected"),
        }  # fmt: skip
        deadline = time.monotonic() + self.wait_s
        missing = wanted
        while missing and time.monotonic() < deadline:
            try:
                rows = load_events(self.settings, since=self.started_at).select(["request_id", "event_type"])
                seen = set(zip(rows["request_id"].to_pylist(), rows["event_type"].to_pylist(), strict=True))
                missing = {(s, t) for s, t in wanted if (self.ids.get(s), t) not in seen}
            except Exception:  # noqa: S110 -- the table may not exist until the sink's first commit
                pass
            time.sleep(1.0)
        assert not missing, f"events not in the audit log after {self.wait_s:.0f}s: {sorted(missing)}"
        tbl = open_table(self.settings)
        verifier = load_verifier(self.settings.key_path("chain_verify_key"))
        decode = EventCodec(self.settings.kafka.schema_registry_url).decode
        report = verify_table(tbl, verifier, decode, witness_path(self.settings))
        assert report.ok, f"verify failed: {report.problems[:3]}"
        return f"querytrail verify OK: {report.rows} rows, {report.partitions} hash chains, signed heads"

    def report(self, name: str, columns: list[str], step: str, printer: Callable[[str], None]) -> str:
        from sinks.reports import format_result, load_events, run_report

        names, rows = run_report(load_events(self.settings), name, since=self.started_at)
        keep = [names.index(c) for c in columns]
        printer(format_result(columns, [tuple(r[i] for i in keep) for r in rows]))
        ids = {r[names.index("request_id")] for r in rows}
        assert self.ids[step] in ids, f"{self.ids[step]} missing from the {name} report"
        return f"querytrail report {name}: {len(rows)} row(s) for this run, including {self.ids[step]}"


def _no_seeded_pii(values: list[Any]) -> None:
    from infra.seed import SEEDED_PII

    leaked = [v for v in values if str(v) in set(map(str, SEEDED_PII))]
    assert not leaked, f"raw seeded PII returned: {leaked}"


def _demo(args: argparse.Namespace) -> int:
    with_reconfigure = getattr(sys.stdout, "reconfigure", None)
    if with_reconfigure is not None:
        with_reconfigure(errors="replace", line_buffering=True)
    t0 = time.monotonic()
    say = lambda text: print(f"  · {text}")  # noqa: E731
    print("querytrail demo: a CI service account's queries, held, masked, approved, denied and audited")
    try:
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
