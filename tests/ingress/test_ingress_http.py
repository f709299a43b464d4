"""The HTTP ingress over real HTTP (uvicorn) against the real broker, reading the Avro events back."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ingress.app import create_app
from querytrail import devissuer
from querytrail.credentials import CredentialVerifier
from querytrail.identity import TokenVerifier
from querytrail.sealing import ensure_keys
from querytrail.settings import IssuerSettings, Settings
from schemas.codec import EventCodec
from schemas.events import (
    PolicyDecided,
    QueryCompleted,
    ResultColumn,
    ResultPage,
    VerifiedIdentity,
    new_event_id,
    producer,
    utcnow,
)
from tests.ingress.ingress_kafka import free_port, publish, read_topic, serve, topic_bytes
from tests.ingress.ingress_oidc import Issuer, IssuerServer

pytestmark = pytest.mark.integration
codec = EventCodec()
BODY = {
    "prompt": "count customers",
    "sql": "select count(*) from customers",
    "model": "claude-test",
    "target": {"profile": "analytics", "database": "ANALYTICS", "schema": "PUBLIC"},
    "context": {"repository": "acme/etl", "run_id": "7"},
}


@pytest.fixture
def corp(issuer_server: IssuerServer) -> Issuer:
    return issuer_server.add("corp", "ES256")


@pytest.fixture
def stack(qt_settings: Callable[..., Settings], corp: Issuer) -> Iterator[tuple[Settings, str]]:
    port = free_port()
    settings = qt_settings(
        identity={
            "dev_issuer_enabled": True,
            "dev_issuer_url": f"http://127.0.0.1:{port}/dev-issuer",
            "issuers": [IssuerSettings(issuer=corp.url)],
            "jwks_min_refetch_interval_s": 1.0,
        },
        ingress={"max_body_bytes": 4096, "auditor_groups": ["auditor"], "publish_timeout_s": 5.0},
        limits={"max_prompt_bytes": 1000, "max_sql_bytes": 1000},
    )
    ensure_keys(settings)
    app = create_app(settings)
    with serve(app, port) as url:
        # The outcome index must be reading before tests publish outcomes.
        deadline = time.monotonic() + 20
        while not app.state.ingress.indexer.assigned.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield settings, url


def _token(settings: Settings, sub: str, groups: tuple[str, ...] = ("ci",), **kw: Any) -> str:
    return devissuer.mint_token(
        settings, sub=sub, groups=list(groups), claims={"repository": "acme/etl"}, **kw
    )


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _no_token_in(tokens: list[str], *blobs: bytes | str) -> None:
    for token in tokens:
        sig = token.rsplit(".", 1)[-1]
        for blob in blobs:
            data = blob.encode() if isinstance(blob, str) else blob
            assert token.encode() not in data and sig.encode() not in data


def test_submit_publishes_attested_request(
    stack: tuple[Settings, str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    settings, url = stack
    token = _token(settings, "ci-bot")
    resp = httpx.post(f"{url}/v1/queries", json=BODY, headers=_auth(token), timeout=30)
    assert resp.status_code == 202, resp.text
    rid = resp.json()["request_id"]
    [(key, value)] = read_topic(settings, "requests", 1)
    assert key == rid.encode()
    event = codec.decode(value)
    assert event.event_type == "QueryRequested" and event.request_id == rid
    assert (event.prompt, event.sql, event.model) == (BODY["prompt"], BODY["sql"], BODY["model"])
    assert (event.target.profile, event.target.database, event.target.schema) == (
        "analytics",
        "ANALYTICS",
        "PUBLIC",
    )
    assert (event.context.repository, event.context.run_id) == ("acme/etl", "7")
    cred = event.credential
    assert cred.sealed_token is None and cred.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert cred.attested.subject == "ci-bot" and cred.attested.groups == ("ci",)
    # The worker's check: attestation over this request id, token hash, claims and statement.
    identity = CredentialVerifier.from_settings(settings).verify(cred, request_id=rid, sql=event.sql)
    assert identity.subject == "ci-bot" and identity.repository == "acme/etl"
    assert "accepted request" in caplog.text
    _no_token_in([token], value, caplog.text, capsys.readouterr().out)


def test_idempotency_key_makes_a_retry_the_same_request(stack: tuple[Settings, str]) -> None:
    """A client whose 202 was lost retries with the same Idempotency-Key: same request id (so the
    worker, which dedupes on request ids, decides it once); another caller's same key is another
    request; without a key every POST is new; a malformed key is refused before publishing."""
    settings, url = stack
    bot, other = _token(settings, "ci-bot"), _token(settings, "other-bot")

    def post(token: str, key: str | None) -> httpx.Response:
        headers = _auth(token) | ({"Idempotency-Key": key} if key is not None else {})
        return httpx.post(f"{url}/v1/queries", json=BODY, headers=headers, timeout=30)

    first, retry = post(bot, "job-7-attempt"), post(bot, "job-7-attempt")
    assert first.status_code == retry.status_code == 202, (first.text, retry.text)
    assert first.json()["request_id"] == retry.json()["request_id"]
    theirs = post(other, "job-7-attempt")
    assert theirs.status_code == 202 and theirs.json()["request_id"] != first.json()["request_id"]
    plain = [post(bot, None).json()["request_id"] for _ in range(2)]
    assert len(set(plain)) == 2 and first.json()["request_id"] not in plain
    bad = post(bot, "has space")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_idempotency_key"
    # both submissions of the retried request are on the topic (the audit log keeps them), one id
    ids = [codec.decode(v).request_id for _, v in read_topic(settings, "requests", 5)]
    assert ids.count(first.json()["request_id"]) == 2 and len(ids) == 5


def test_identity_rejections_answer_401_and_are_recorded(
    stack: tuple[Settings, str],
    corp: Issuer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    settings, url = stack
    now = time.time()
    cases = {
        "expired": _token(settings, "ci-bot", ttl_s=5, now=now - 3600),
        "wrong_audience": _token(settings, "ci-bot", audience="other"),
        "unknown_key": corp.mint(kid="rotated-away"),
        "not_yet_valid": corp.mint(now=now + 3600),
        "malformed": "garbage-token",
    }
    rejected: dict[str, str] = {}
    for code, token in cases.items():
        resp = httpx.post(f"{url}/v1/queries", json=BODY, headers=_auth(token), timeout=30)
        assert resp.status_code == 401, (code, resp.text)
        assert resp.json()["error"] == code
        rejected[resp.json()["request_id"]] = token
    resp = httpx.post(f"{url}/v1/queries", json=BODY, timeout=30)
    assert (resp.status_code, resp.json()["error"]) == (401, "missing_token")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    records = read_topic(settings, "results", len(cases) + 1)
    events = {e.request_id: e for e in (codec.decode(v) for _, v in records)}
    assert len(events) == len(cases) + 1
    for rid, token in rejected.items():
        event = events[rid]
        assert (event.event_type, event.stage) == ("QueryRejected", "identity")
        assert event.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
        assert event.reason_code == {v: k for k, v in cases.items()}[token]
    missing = events[resp.json()["request_id"]]
    assert (missing.reason_code, missing.token_sha256) == ("missing_token", None)
    assert read_topic(settings, "requests", 1, timeout=2) == []  # nothing was requested
    assert caplog.text.count("refused caller") == len(cases) + 1  # the scan below covers real log lines
    _no_token_in(list(cases.values())[:-1], *(v for _, v in records), caplog.text, capsys.readouterr().out)


def test_request_errors(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    h = _auth(_token(settings, "ci-bot"))

    def post(**kw: Any) -> tuple[int, str]:
        resp = httpx.post(f"{url}/v1/queries", headers={**h, **kw.pop("headers", {})}, timeout=30, **kw)
        return resp.status_code, resp.json()["error"]

    assert post(content=b"{not json", headers={"Content-Type": "application/json"}) == (400, "invalid_json")
    assert post(json=[1, 2]) == (400, "invalid_json")
    assert post(json={"prompt": "p", "model": "m"}) == (422, "invalid_request")
    assert post(json={**BODY, "target": 5}) == (422, "invalid_request")
    assert post(json={**BODY, "target": "nope"}) == (422, "unknown_target")
    assert post(json={**BODY, "max_rows": -1}) == (422, "invalid_request")
    assert post(json={**BODY, "prompt": "x" * 1001}) == (413, "prompt_too_large")
    assert post(json={**BODY, "sql": "select " + "1," * 600 + "1"}) == (413, "sql_too_large")
    assert post(json={**BODY, "context": {"x": "y" * 5000}}) == (413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    assert post(content=chunks()) == (413, "body_too_large")
    resp = httpx.get(f"{url}/v1/queries/unknown-id?wait=0", headers=h, timeout=30)
    assert (resp.status_code, resp.json()["error"]) == (404, "not_found")
    resp = httpx.get(f"{url}/v1/queries/x?wait=soon", headers=h, timeout=30)
    assert (resp.status_code, resp.json()["error"]) == (400, "bad_request")
    resp = httpx.get(f"{url}/v1/nothing", timeout=30)
    assert (resp.status_code, resp.json()["error"]) == (404, "not_found")
    resp = httpx.get(f"{url}/v1/queries/x", timeout=30)
    assert (resp.status_code, resp.json()["error"]) == (401, "missing_token")
    assert read_topic(settings, "requests", 1, timeout=2) == []  # no invalid request was published


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_body_too_large_answer_reaches_a_client_still_sending(
    stack: tuple[Settings, str], declared: bool
) -> None:
    """The 413 must reach a client that is still sending its body, not a reset in its place
    (a CI run saw BrokenPipeError): the body arrives in parts, slowly, so a server that answers
    and closes early has closed before the client finishes."""
    import socket
    from urllib.parse import urlsplit

    settings, url = stack
    where = urlsplit(url)
    body = b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'  # more than the socket buffers hold
    head = [
        "POST /v1/queries HTTP/1.1",
        f"Host: {where.netloc}",
        f"Authorization: Bearer {_token(settings, 'ci-bot')}",
        "Content-Type: application/json",
        "Connection: close",  # as urllib sends it: the server closes right after its answer
        f"Content-Length: {len(body)}" if declared else "Transfer-Encoding: chunked",
    ]
    step = len(body) // 6
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    if not declared:
        parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for part in parts:  # a slow sender: a server that answered and closed is gone by now
            sock.sendall(part)
            time.sleep(0.1)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"body_too_large"' in answer


def _identity(settings: Settings, sub: str) -> VerifiedIdentity:
    return VerifiedIdentity(
        subject=sub,
        issuer=settings.identity.dev_issuer_url,
        groups=("ci",),
        claims_json=json.dumps({"sub": sub}),
        token_sha256="0" * 64,
    )


def _outcome_events(settings: Settings, rid: str, sub: str) -> tuple[list[Any], list[Any]]:
    common = {"request_id": rid, "occurred_at": utcnow(), "producer": producer("worker")}
    decided = PolicyDecided(
        event_id=new_event_id(),
        **common,
        decision="allow",
        rules=("ci-reads",),
        reasons=(),
        statement="select",
        tables=("ANALYTICS.PUBLIC.CUSTOMERS",),
        findings=(),
        masked_columns=(),
        policy_sha256="p" * 64,
        identity=_identity(settings, sub),
        sql_text=BODY["sql"],
    )
    done = QueryCompleted(
        event_id=new_event_id(),
        **common,
        row_count=2,
        columns=(ResultColumn(name="N", type="NUMBER", masked=False),),
        elapsed_ms=3,
        result_sha256="r" * 64,
        pages=1,
        truncated=False,
    )
    page = ResultPage(
        event_id=new_event_id(), **common, page=0, rows_json="[[1],[2]]", row_offset=0, last=True
    )
    return [decided], [page, done]


def test_ownership_and_long_poll(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    alice, bob = _auth(_token(settings, "alice")), _auth(_token(settings, "bob"))
    auditor = _auth(_token(settings, "carol", groups=("auditor",)))
    rid = httpx.post(f"{url}/v1/queries", json=BODY, headers=alice, timeout=30).json()["request_id"]

    def get(h: dict[str, str], request_id: str = rid, wait: float = 0) -> httpx.Response:
        return httpx.get(f"{url}/v1/queries/{request_id}?wait={wait}", headers=h, timeout=60)

    assert get(alice).json()["status"] == "pending"
    assert (get(bob).status_code, get(bob).json()["error"]) == (403, "forbidden")
    assert get(auditor).status_code == 200
    decisions, results = _outcome_events(settings, rid, "alice")
    started = time.monotonic()
    publish(settings, "decisions", *decisions)
    publish(settings, "results", *results)
    body = get(alice, wait=20).json()
    assert time.monotonic() - started < 15
    assert body["status"] == "completed" and body["decision"]["rules"] == ["ci-reads"]
    assert body["result"]["rows"] == [[1], [2]] and body["result"]["columns"][0]["name"] == "N"
    assert get(bob).status_code == 403

    # A request that came straight to Kafka (CLI path): its requester comes from PolicyDecided.
    other = new_event_id()
    decisions, results = _outcome_events(settings, other, "bob")
    publish(settings, "decisions", *decisions)
    publish(settings, "results", *results)
    assert get(bob, other, wait=20).json()["status"] == "completed"
    assert get(alice, other).status_code == 403
    assert get(auditor, other).json()["result"]["row_count"] == 2


def test_actions_health_openapi_and_dev_issuer(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    token = _token(settings, "reporter-svc")
    decisions, _ = _outcome_events(settings, "r-1", "reporter-svc")  # its own request
    publish(settings, "decisions", *decisions)
    _wait_known(url, token, "r-1")
    resp = httpx.post(
        f"{url}/v1/actions",
        headers=_auth(token),
        timeout=30,
        json={
            "request_id": "r-1",
            "action": "wrote report",
            "system": "looker",
            "details": {"dashboard": 7},
            "row_count": 2,
        },
    )
    assert resp.status_code == 202, resp.text
    [(key, value)] = read_topic(settings, "actions", 1)
    event = codec.decode(value)
    assert key == b"r-1" and event.event_type == "DownstreamActionReported"
    assert (event.action, event.system, event.row_count, event.reporter.subject) == (
        "wrote report",
        "looker",
        2,
        "reporter-svc",
    )
    assert json.loads(event.details_json) == {"dashboard": 7}
    resp = httpx.post(f"{url}/v1/actions", headers=_auth(token), json={"request_id": "r"}, timeout=30)
    assert (resp.status_code, resp.json()["error"]) == (422, "invalid_request")

    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    doc = httpx.get(f"{url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and {
        "/v1/queries",
        "/v1/queries/{request_id}",
        "/v1/actions",
    } <= set(doc["paths"])

    # The dev issuer's discovery and JWKS are served, and a verifier using them over HTTP accepts its tokens.
    disc = httpx.get(f"{url}/dev-issuer/.well-known/openid-configuration").json()
    assert disc["issuer"] == settings.identity.dev_issuer_url
    over_http = TokenVerifier([IssuerSettings(issuer=disc["issuer"], algorithms=["EdDSA", "ES256"])])
    assert over_http.verify(token).subject == "reporter-svc"


def test_dev_issuer_not_served_when_disabled(qt_settings: Callable[..., Settings]) -> None:
    settings = qt_settings(identity={"dev_issuer_enabled": False})
    ensure_keys(settings)
    with serve(create_app(settings), free_port()) as url:
        assert httpx.get(f"{url}/dev-issuer/jwks.json").status_code == 404
        token = devissuer.mint_token(settings, sub="ci-bot")
        resp = httpx.post(f"{url}/v1/queries", json=BODY, headers=_auth(token), timeout=30)
        assert (resp.status_code, resp.json()["error"]) == (401, "unknown_issuer")


def test_kafka_unreachable_answers_503(qt_settings: Callable[..., Settings]) -> None:
    closed = free_port()  # nothing listens there
    good = qt_settings()
    settings = qt_settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{closed}"},
        identity={"dev_issuer_enabled": True},
        ingress={"publish_timeout_s": 2.0},
    )
    ensure_keys(settings)
    token = _token(settings, "ci-bot")
    with serve(create_app(settings), free_port()) as url:
        resp = httpx.post(f"{url}/v1/queries", json=BODY, headers=_auth(token), timeout=30)
        assert (resp.status_code, resp.json()["error"]) == (503, "kafka_unavailable")
        resp = httpx.post(f"{url}/v1/queries", json=BODY, headers=_auth("bad-token"), timeout=30)
        assert resp.status_code == 503  # a refusal that cannot be recorded is not answered as if it were
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 503
        assert httpx.get(f"{url}/healthz").status_code == 200
    # Same topic prefix on the real broker: nothing (not even a partial record) was published.
    assert topic_bytes(good, "requests", settle=1.0) == []
    assert topic_bytes(good, "results", settle=1.0) == []


def _wait_known(url: str, token: str, rid: str, timeout: float = 20.0) -> None:
    """Until the ingress's outcome index holds ``rid`` (GET answers something but 404)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/queries/{rid}", headers=_auth(token), timeout=10).status_code != 404:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{rid} never reached the outcome index")


def test_actions_follow_the_ownership_rule_of_get(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    owner, other = _token(settings, "owner-svc"), _token(settings, "other-svc")
    auditor = _token(settings, "audit-svc", groups=("auditor",))
    rid = new_event_id()
    decisions, _ = _outcome_events(settings, rid, "owner-svc")
    publish(settings, "decisions", *decisions)
    _wait_known(url, owner, rid)
    action = {"request_id": rid, "action": "exported", "system": "s3"}

    def post(token: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{url}/v1/actions", headers=_auth(token), json=body, timeout=30)

    unknown = post(owner, {**action, "request_id": "no-such-request"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    theirs = post(other, action)
    assert (theirs.status_code, theirs.json()["error"]) == (403, "forbidden")
    assert post(owner, action).status_code == 202
    assert post(auditor, action).status_code == 202
    reporters = [codec.decode(v).reporter.subject for _, v in read_topic(settings, "actions", 3, timeout=3)]
    assert reporters == ["owner-svc", "audit-svc"]


def test_idempotency_key_with_another_body_is_409_and_ids_are_not_computable(
    stack: tuple[Settings, str],
) -> None:
    import uuid

    settings, url = stack
    token = _token(settings, "ci-bot")
    headers = _auth(token) | {"Idempotency-Key": "job-9"}
    first = httpx.post(f"{url}/v1/queries", json=BODY, headers=headers, timeout=30)
    assert first.status_code == 202, first.text
    same = httpx.post(f"{url}/v1/queries", json=dict(reversed(BODY.items())), headers=headers, timeout=30)
    assert same.status_code == 202 and same.json()["request_id"] == first.json()["request_id"]
    changed = httpx.post(
        f"{url}/v1/queries", json={**BODY, "sql": "select * from customers"}, headers=headers, timeout=30
    )
    assert (changed.status_code, changed.json()["error"]) == (409, "idempotency_key_reused")
    # only the two identical submissions were published
    assert len(read_topic(settings, "requests", 3, timeout=3)) == 2
    # the id is not the public uuid5 of (issuer, subject, key) that anyone could compute before
    issuer = settings.identity.dev_issuer_url
    namespace = uuid.UUID("5b0c9a7e-8f55-4c6e-9d0b-6a51f1f0c2d4")
    guessable = str(uuid.uuid5(namespace, f"{issuer}\nci-bot\njob-9"))
    assert first.json()["request_id"] != guessable


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"prompt": "\\ud800", "sql": "select 1", "model": "m"}', 422),  # a lone surrogate
        (b'{"prompt": "p", "sql": "select 1", "model": "m", "context": {"\\udfff": "x"}}', 422),
        (b'{"prompt": "p", "sql": "select 1", "model": "m", "max_rows": 1180591620717411303424}', 422),
        (
            b'{"prompt": "p", "sql": "select 1", "model": "m", "context": {"run_id": 99999999999999999999}}',
            422,
        ),
        (b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400),  # deeper than the body limit allows
        (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", 422),
    ],
)
def test_malformed_bodies_are_400_or_422_never_500(
    stack: tuple[Settings, str], raw: bytes, status: int
) -> None:
    settings, url = stack
    token = _token(settings, "ci-bot")
    headers = _auth(token) | {"Content-Type": "application/json"}
    for path in ("/v1/queries", "/v1/actions"):
        resp = httpx.post(f"{url}{path}", content=raw, headers=headers, timeout=30)
        assert resp.status_code in (400, 413, 422), (path, resp.status_code, resp.text)
        if path == "/v1/queries" and len(raw) <= settings.ingress.max_body_bytes:
            assert resp.status_code == status, resp.text


def test_verified_claims_win_over_caller_context(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    token = _token(settings, "ci-bot")  # verified claim: repository acme/etl
    body = {**BODY, "context": {"repository": "victim/payroll", "run_id": "7", "caller.repository": "forged"}}
    resp = httpx.post(f"{url}/v1/queries", json=body, headers=_auth(token), timeout=30)
    assert resp.status_code == 202, resp.text
    [(_, value)] = read_topic(settings, "requests", 1)
    context = codec.decode(value).context
    assert context.repository == "acme/etl"
    assert dict(context.extra) == {"caller.repository": "victim/payroll"}


def test_refused_callers_are_rate_limited_and_evict_nothing(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    owner = _token(settings, "owner-svc")
    rid = new_event_id()
    decisions, _ = _outcome_events(settings, rid, "owner-svc")
    publish(settings, "decisions", *decisions)
    _wait_known(url, owner, rid)
    statuses = [
        httpx.post(f"{url}/v1/queries", json=BODY, headers=_auth("garbage"), timeout=30).status_code
        for _ in range(70)
    ]
    # a full bucket of 60, refilled at one a second while the 70 requests take their time
    recorded = statuses.count(401)
    assert statuses[:60] == [401] * 60 and 429 in statuses and set(statuses) == {401, 429}, statuses
    assert len(read_topic(settings, "results", recorded + 1, timeout=5)) == recorded  # 429s: nothing
    assert httpx.get(f"{url}/v1/queries/{rid}", headers=_auth(owner), timeout=10).status_code == 200


def test_refused_callers_do_not_evict_outcomes_from_the_index() -> None:
    from ingress.outcomes import OutcomeIndex
    from schemas.events import QueryRejected

    index = OutcomeIndex(max_requests=3)
    index.note_request("mine", ("iss", "me"))
    for n in range(10):
        index.apply(
            QueryRejected(
                event_id=new_event_id(),
                request_id=f"refused-{n}",
                occurred_at=utcnow(),
                producer=producer("ingress"),
                stage="identity",
                reason_code="malformed",
                reason="bad token",
            )
        )
    assert index.get("mine") is not None and len(index) == 1


def test_refusal_limiter_refills() -> None:
    from ingress.http_auth import RefusalLimiter

    limiter = RefusalLimiter(per_minute=2)
    assert [limiter.allow("a", now=0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", now=0.0)
    assert limiter.allow("a", now=30.0) and not limiter.allow("a", now=30.0)
