"""The CI client: CI context, the GitHub Actions token endpoint, and `querytrail submit` on the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from ingress.client import ClientError, ci_context_from_env, fetch_github_actions_token
from querytrail.credentials import CredentialVerifier
from querytrail.keys import ensure_service_keys
from querytrail.sealing import ensure_keys, load_sealing_private_key, token_sha256, unseal_token
from querytrail.settings import Settings
from schemas.codec import EventCodec
from schemas.events import (
    ApprovalRequested,
    PolicyDecided,
    QueryCompleted,
    QueryFailed,
    QueryRejected,
    ResultColumn,
    ResultPage,
    VerifiedIdentity,
    new_event_id,
    producer,
    utcnow,
)
from tests.ingress.ingress_kafka import publish, read_topic

GITHUB_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/etl",
    "GITHUB_WORKFLOW": "nightly",
    "GITHUB_RUN_ID": "991",
    "GITHUB_SHA": "cafe12",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_ACTOR": "octocat",
}


def test_ci_context_from_github_and_gitlab() -> None:
    ctx = ci_context_from_env(GITHUB_ENV)
    assert (ctx.ci_provider, ctx.repository, ctx.workflow, ctx.run_id, ctx.commit, ctx.ref, ctx.actor) == (
        "github-actions",
        "acme/etl",
        "nightly",
        "991",
        "cafe12",
        "refs/heads/main",
        "octocat",
    )
    ctx = ci_context_from_env(
        {
            "GITLAB_CI": "true",
            "CI_PROJECT_PATH": "acme/etl",
            "CI_PIPELINE_ID": "55",
            "CI_COMMIT_SHA": "beef",
            "CI_COMMIT_REF_NAME": "main",
            "GITLAB_USER_LOGIN": "dev",
            "CI_JOB_NAME": "sql",
        }
    )
    assert (ctx.ci_provider, ctx.repository, ctx.workflow, ctx.run_id, ctx.commit, ctx.ref, ctx.actor) == (
        "gitlab-ci",
        "acme/etl",
        "sql",
        "55",
        "beef",
        "main",
        "dev",
    )
    assert ci_context_from_env({}).ci_provider == "local"


@pytest.fixture
def github_oidc() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local stand-in for GitHub's ACTIONS_ID_TOKEN_REQUEST_URL endpoint."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            seen.append({"auth": self.headers.get("Authorization"), "query": query})
            if self.headers.get("Authorization") != "bearer runtime-secret":
                self.send_error(401)
                return
            body = json.dumps({"value": f"oidc-token-for-{query['audience'][0]}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/token?api-version=2.0", seen
    httpd.shutdown()
    httpd.server_close()


def test_fetch_github_actions_token(github_oidc: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = github_oidc
    env = {"ACTIONS_ID_TOKEN_REQUEST_URL": url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runtime-secret"}
    assert fetch_github_actions_token("querytrail", env) == "oidc-token-for-querytrail"
    assert seen[-1]["query"] == {"api-version": ["2.0"], "audience": ["querytrail"]}
    with pytest.raises(ClientError) as info:
        fetch_github_actions_token("querytrail", {**env, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"})
    assert "runtime-secret" not in str(info.value) and "wrong" not in str(info.value)
    with pytest.raises(ClientError, match="id-token: write"):
        fetch_github_actions_token("querytrail", {})


# --- `querytrail submit` against the real broker --------------------------------------------


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("QUERYTRAIL_", "GITHUB_", "GITLAB", "CI_"))
    }
    env.update(
        QUERYTRAIL_HOME=str(settings.home),
        QUERYTRAIL_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        QUERYTRAIL_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        QUERYTRAIL_IDENTITY__DEV_ISSUER_ENABLED="true",
        QUERYTRAIL_LOG_LEVEL="DEBUG",
        **extra,
    )
    return env


def _cli(args: list[str], env: dict[str, str], **kw: Any) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "querytrail.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


@pytest.fixture
def local(qt_settings: Callable[..., Settings], tmp_path: Path) -> tuple[Settings, dict[str, str], Path]:
    settings = qt_settings(identity={"dev_issuer_enabled": True})
    ensure_keys(settings)
    ensure_service_keys(settings)  # the client trusts only outcomes the services signed
    env = _env(settings)
    minted = _cli(
        ["token", "--sub", "ci-bot", "--groups", "ci", "--claim", "repository=acme/etl", "--ttl", "10m"], env
    )
    assert minted.returncode == 0, minted.stderr
    (tmp_path / "token").write_text(minted.stdout)
    (tmp_path / "q.sql").write_text("select id, email from customers")
    (tmp_path / "p.txt").write_text("list customers")
    return settings, env, tmp_path


def _submit_args(d: Path, *extra: str) -> list[str]:
    return [
        "submit",
        "--sql-file",
        str(d / "q.sql"),
        "--prompt-file",
        str(d / "p.txt"),
        "--model",
        "claude-test",
        "--token-file",
        str(d / "token"),
        *extra,
    ]


@pytest.mark.integration
def test_submit_publishes_sealed_request_and_times_out(local: tuple[Settings, dict[str, str], Path]) -> None:
    settings, env, d = local
    token = (d / "token").read_text().strip()
    done = _cli(
        _submit_args(d, "--wait", "1", "--database", "ANALYTICS", "--schema", "PUBLIC"), {**env, **GITHUB_ENV}
    )
    assert done.returncode == 5, done.stderr
    assert "timed out" in done.stderr
    [(key, value)] = read_topic(settings, "requests", 1)
    event = EventCodec().decode(value)
    assert key == event.request_id.encode() and event.request_id in done.stderr
    assert (event.sql, event.prompt, event.model) == (
        "select id, email from customers",
        "list customers",
        "claude-test",
    )
    assert (event.target.profile, event.target.database, event.target.schema) == (
        "analytics",
        "ANALYTICS",
        "PUBLIC",
    )
    assert (event.context.ci_provider, event.context.repository, event.context.run_id) == (
        "github-actions",
        "acme/etl",
        "991",
    )
    cred = event.credential
    assert cred.attested is None and cred.token_sha256 == token_sha256(token)
    assert unseal_token(cred.sealed_token, load_sealing_private_key(settings), event.request_id) == token
    assert (
        CredentialVerifier.from_settings(settings).verify(cred, request_id=event.request_id).subject
        == "ci-bot"
    )
    for blob in (value, done.stdout.encode(), done.stderr.encode()):
        assert token.encode() not in blob and token.rsplit(".", 1)[1].encode() not in blob


@pytest.mark.integration
def test_submit_usage_errors(local: tuple[Settings, dict[str, str], Path]) -> None:
    _, env, d = local
    assert _cli(["submit", "--sql-file", str(d / "q.sql")], env).returncode == 2
    missing = _cli(
        [
            "submit",
            "--sql-file",
            str(d / "nope.sql"),
            "--prompt-file",
            str(d / "p.txt"),
            "--model",
            "m",
            "--token-file",
            str(d / "token"),
        ],
        env,
    )
    assert missing.returncode == 2 and "nope.sql" in missing.stderr
    no_gh = _cli(
        [
            "submit",
            "--sql-file",
            str(d / "q.sql"),
            "--prompt-file",
            str(d / "p.txt"),
            "--model",
            "m",
            "--token-from",
            "github-actions",
        ],
        env,
    )
    assert no_gh.returncode == 2 and "ACTIONS_ID_TOKEN_REQUEST_URL" in no_gh.stderr
    assert _cli(["token", "--sub", "x", "--ttl", "forever"], env).returncode == 2


def _wait_for_request(settings: Settings, n: int) -> str:
    records = read_topic(settings, "requests", n, timeout=60)
    assert len(records) == n
    return str(EventCodec().decode(records[-1][1]).request_id)


def _ident() -> VerifiedIdentity:
    return VerifiedIdentity(
        subject="ci-bot", issuer="dev", groups=("ci",), claims_json="{}", token_sha256="0" * 64
    )


@pytest.mark.integration
def test_submit_outcomes_and_exit_codes(local: tuple[Settings, dict[str, str], Path]) -> None:
    """Stand in for the processors: publish each outcome and check what `submit` prints and returns."""
    settings, env, d = local

    def common(rid: str) -> dict[str, Any]:
        return {
            "event_id": new_event_id(),
            "request_id": rid,
            "occurred_at": utcnow(),
            "producer": producer("test"),
        }

    def completed(rid: str) -> None:
        publish(
            settings,
            "decisions",
            PolicyDecided(
                **common(rid),
                decision="require_approval",
                rules=("pii",),
                reasons=(),
                statement="select",
                tables=(),
                findings=(),
                masked_columns=(),
                policy_sha256="p",
                identity=_ident(),
                sql_text="s",
            ),
            ApprovalRequested(
                **common(rid),
                statement_sha256="h",
                statement="s",
                rule_id="pii",
                approver_groups=("data-security",),
                min_approvals=1,
                expires_at=utcnow(),
                requester=_ident(),
                prompt="p",
                sql_text="s",
                findings=(),
                masked_columns=(),
            ),
        )
        time.sleep(1.0)  # the client reports the hold before the result arrives
        publish(
            settings,
            "results",
            ResultPage(**common(rid), page=1, rows_json='[[3, "c@x"]]', row_offset=2, last=True),
            ResultPage(
                **common(rid), page=0, rows_json='[[1, "****@x"], [2, null]]', row_offset=0, last=False
            ),
            QueryCompleted(
                **common(rid),
                row_count=3,
                elapsed_ms=5,
                result_sha256="r",
                pages=2,
                truncated=False,
                columns=(
                    ResultColumn(name="ID", type="NUMBER", masked=False),
                    ResultColumn(name="EMAIL", type="TEXT", masked=True),
                ),
            ),
        )

    def rejected(rid: str) -> None:
        publish(
            settings,
            "results",
            QueryRejected(
                **common(rid),
                stage="policy",
                reason_code="denied_by_policy",
                reason="writes are not allowed",
                rules=("no-writes",),
            ),
        )

    def failed(rid: str) -> None:
        publish(
            settings, "results", QueryFailed(**common(rid), outcome="failed", message="Object does not exist")
        )

    cases = [(completed, "csv", 0), (rejected, "table", 3), (failed, "table", 4)]
    for n, (respond, fmt, code) in enumerate(cases, start=1):
        proc = subprocess.Popen(
            [sys.executable, "-m", "querytrail.cli", *_submit_args(d, "--wait", "60", "--format", fmt)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            rid = _wait_for_request(settings, n)
            time.sleep(0.5)
            respond(rid)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == code, err
        if respond is completed:
            assert out.splitlines() == ["ID,EMAIL", "1,****@x", "2,", "3,c@x"]
            assert "held for approval by data-security" in err
        if respond is rejected:
            assert "denied_by_policy" in err and "no-writes" in err
        if respond is failed:
            assert "Object does not exist" in err
