"""The demo's story: each step drives querytrail through its public interfaces and checks it.

A step returns a one-line explanation, or raises (AssertionError when querytrail did not behave
as promised). ``querytrail demo`` (``querytrail.cli.demo``) runs them in order.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["APPROVER_SUBJECT", "CI_SUBJECT", "Demo"]

CI_SUBJECT = "svc-etl-ci"
APPROVER_SUBJECT = "dana@acme.example"
_EMAIL_MASK = re.compile(r"^\*+@[\w.-]+$")


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
        from querytrail.devissuer import mint_token

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
        from ingress.verdicts import send_verdict

        _, judged = send_verdict(
            self.settings, self.codec, request_id=request_id, statement_sha256=statement_sha256,
            token=token, verdict="approve", comment="demo", wait_s=self.wait_s,
        )  # fmt: skip
        if judged is None:
            raise AssertionError(f"no judgement of the verdict within {self.wait_s:.0f}s")
        return bool(judged.accepted), str(judged.reason)

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
        # No status check in between: a slow reader may see the expiry before the hold, and the
        # expiry (approval_expired) is itself the proof that the statement was held.
        out = self.finish(sub)
        findings = ", ".join(f["code"] for f in out.decision["findings"]) if out.decision else "full scan"
        # ApprovalResolved (decisions topic) and QueryRejected (results topic) may arrive in either order
        state = (out.approval or {}).get("state")
        code = (out.rejected or {}).get("reason_code")
        expired = state == "expired" or code == "approval_expired"
        assert out.terminal and expired, f"expected expiry, got {out.status}/{state}/{code}"
        assert out.completed is None, "the held statement ran"
        rules = "+".join((out.decision or out.rejected or {}).get("rules", []))
        return f"{findings} held by {rules}; nobody approved within the ttl, so it expired and never ran"

    def mcp_session(self) -> str:
        """An agent over MCP (the ingress's /mcp, the SDK's own client): a masked query, a held one."""
        import anyio

        ing = self.settings.ingress
        url = f"http://{ing.host}:{ing.port}/mcp"
        masked_sql = (
            "SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE COUNTRY = 'US' ORDER BY ID LIMIT 3"
        )
        held_sql = "SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS"

        async def session() -> tuple[dict[str, Any], dict[str, Any]]:
            import httpx2
            from mcp.client.session import ClientSession
            from mcp.client.streamable_http import streamable_http_client
            from mcp_types import Implementation

            agent = Implementation(name="claude-code", version="demo")
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.ci_token}"}, timeout=60) as http,
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write, client_info=agent) as mcp,
            ):
                await mcp.initialize()
                first = await mcp.call_tool("run_query", {"sql": masked_sql, "intent": "three customers"})
                second = await mcp.call_tool("run_query", {"sql": held_sql, "intent": "who are the admins"})
                assert not first.is_error and not second.is_error, f"{first.content} {second.content}"
                return first.structured_content or {}, second.structured_content or {}

        rows, held = anyio.run(session)
        emails = [r[1] for r in rows.get("rows", [])]
        assert rows.get("status") == "completed" and emails, f"expected rows, got {rows}"
        assert all(_EMAIL_MASK.match(str(e)) for e in emails), f"emails not masked: {emails}"
        assert held.get("status") == "awaiting_approval", f"expected a hold, got {held}"
        return (
            f"claude-code over MCP: {len(emails)} rows, EMAIL masked ({emails[0]}); the admin list "
            f"held for {', '.join(held['approver_groups'])} until {held['expires_at'][11:16]} UTC"
        )

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
