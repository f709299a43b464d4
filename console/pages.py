"""The console's pages: pending approvals (live), verdicts, timelines, search, reports, verify.

Every page needs a signed-in session; every POST needs the session's CSRF token. The only
thing the console writes is an approval verdict, through ``ingress.verdicts.send_verdict``:
the same sealing, binding and worker-side checks as ``querytrail approve``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from console.app import Console, current_session, error, render
from console.audit import SEARCH_FIELDS, SearchQuery, _parse_time
from console.html import bar_chart, per_period

__all__ = ["routes"]

log = logging.getLogger(__name__)
_MAX_COMMENT = 2000
_CONSOLE_REPORTS = ("pii-exposure", "privileged-access", "costly-scans")
_SPREADSHEET_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _now() -> datetime:
    return datetime.now(UTC)


def _signin(request: Request) -> Response:
    if request.headers.get("accept", "").startswith("text/event-stream") or request.url.path.endswith(
        "/fragment"
    ):
        return Response("sign in again", status_code=401)
    return RedirectResponse(
        "/login?m=expired" if request.cookies.get("qt_console") else "/login", status_code=303
    )


async def home(request: Request) -> Response:
    return RedirectResponse("/approvals", status_code=303)


# -- pending approvals ----------------------------------------------------------------------------


async def approvals(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    console: Console = request.app.state.console
    return render(
        request,
        "approvals.html",
        items=console.board.items(_now()),
        now=_now(),
        ready=console.board.ready.is_set(),
    )


async def approvals_fragment(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    console: Console = request.app.state.console
    return render(request, "_pending.html", items=console.board.items(_now()), now=_now())


async def events(request: Request) -> Response:
    """Server-sent events: ``pending`` whenever the board changes (and every 10 s, for time left)."""
    session = current_session(request)
    if session is None:
        return _signin(request)
    console: Console = request.app.state.console

    async def stream() -> Any:
        seen, ticks = -1, 0
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            if console.sessions.from_cookie(request.cookies.get("qt_console")) is None:
                yield "event: signin\ndata: expired\n\n"
                return
            if console.board.version != seen or ticks >= 20:
                seen, ticks = console.board.version, 0
                yield f"event: pending\ndata: {seen}\n\n"
            ticks += 1
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


async def approval(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    console: Console = request.app.state.console
    item = console.board.get(request.path_params["request_id"])
    if item is None:
        return error(request, 404, "No such approval", "No approval was asked for this request.")
    return _detail(request, item)


def _detail(request: Request, item: Any, status: int = 200, result: dict[str, Any] | None = None) -> Response:
    from processors.decision.authz import statement_sha256

    genuine = statement_sha256(item.asked.statement) == item.asked.statement_sha256
    return render(
        request, "approval.html", status=status, item=item, now=_now(), genuine=genuine, result=result
    )


async def verdict(request: Request) -> Response:
    """Approve or deny: checked here for the form, judged by the worker for everything else."""
    from processors.decision.authz import statement_sha256

    session = current_session(request)
    if session is None:
        return _signin(request)
    console: Console = request.app.state.console
    form = await request.form()
    if not session.csrf_ok(str(form.get("csrf") or "")):
        return error(request, 403, "Refused", "The form's CSRF token is missing or wrong.")
    rid = request.path_params["request_id"]
    item = console.board.get(rid)
    if item is None:
        return error(request, 404, "No such approval", "No approval was asked for this request.")
    choice = str(form.get("verdict") or "")
    comment = str(form.get("comment") or "").strip() or None
    if choice not in ("approve", "deny"):
        return _detail(request, item, 400, {"ok": False, "text": "choose approve or deny"})
    if comment is not None and len(comment) > _MAX_COMMENT:
        return _detail(
            request, item, 400, {"ok": False, "text": f"the comment is longer than {_MAX_COMMENT} characters"}
        )
    if choice == "deny" and comment is None:
        return _detail(request, item, 400, {"ok": False, "text": "a denial needs a comment"})
    if statement_sha256(item.asked.statement) != item.asked.statement_sha256:
        return _detail(
            request, item, 409, {"ok": False, "text": "the statement does not match its sha256; not sent"}
        )
    if str(form.get("statement_sha256") or "") != item.asked.statement_sha256:
        return _detail(
            request, item, 409, {"ok": False, "text": "the statement changed since you reviewed it; not sent"}
        )
    if session.via == "oidc":
        token = session.token or ""
    else:  # SAML: a bridge token for this verdict alone (console.issuer)
        claims = {
            k: session.identity.claims[k]
            for k in ("preferred_username", "email", "name")
            if k in session.identity.claims
        }
        token = console.issuer.mint(session.identity.subject, tuple(session.identity.groups), claims)
    from schemas.codec import EventCodec

    settings = console.settings
    try:
        _, judged = await run_in_threadpool(
            console.send_verdict,
            settings,
            EventCodec(settings.kafka.schema_registry_url),
            request_id=rid,
            statement_sha256=item.asked.statement_sha256,
            token=token,
            verdict=choice,
            comment=comment,
            wait_s=console.config.verdict_wait_s,
            session_id=item.asked.session_id,
        )
    except Exception as exc:
        log.exception("request %s: the verdict could not be sent", rid)
        return _detail(
            request, item, 503, {"ok": False, "text": f"the verdict could not be sent ({type(exc).__name__})"}
        )
    log.info(
        "request %s: %s by %s judged %s",
        rid,
        choice,
        session.identity.subject,
        None if judged is None else judged.reason,
    )
    if judged is None:
        result = {
            "ok": False,
            "text": f"{choice} sent; the worker did not judge it within {console.config.verdict_wait_s:.0f} s",
        }
        return _detail(request, item, 202, result)
    item = console.board.get(rid) or item
    if judged.accepted:
        return _detail(request, item, 200, {"ok": True, "text": f"{choice} accepted: {judged.reason}"})
    return _detail(request, item, 403, {"ok": False, "text": f"{choice} refused: {judged.reason}"})


# -- timelines, search ---------------------------------------------------------------------------


async def timeline(request: Request) -> Response:
    from sinks.replay import story_text

    if current_session(request) is None:
        return _signin(request)
    console: Console = request.app.state.console
    rid = request.path_params["request_id"]
    story = await run_in_threadpool(console.audit.request_story, rid)
    session_id = next((s["event"].get("session_id") for s in story if s["event"].get("session_id")), None)
    return render(
        request,
        "timeline.html",
        request_id=rid,
        story=story,
        text=story_text(rid, story),
        session_id=session_id,
        pretty=lambda e: json.dumps(e, indent=2, sort_keys=True, default=str, ensure_ascii=False),
    )


async def session_timeline(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    console: Console = request.app.state.console
    sid = request.path_params["session_id"]
    stories = await run_in_threadpool(console.audit.session_requests, sid)
    return render(request, "session.html", session_id=sid, stories=stories)


async def search(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    console: Console = request.app.state.console
    q = SearchQuery.parse(request.query_params)
    searched = bool(q.filters or q.since or q.until or request.query_params.get("go"))
    rows, more = await run_in_threadpool(console.audit.search, q) if searched else ([], False)
    args = {k: v for k, v in request.query_params.items() if k != "page"}
    return render(
        request,
        "search.html",
        q=q,
        fields=SEARCH_FIELDS,
        rows=rows,
        more=more,
        searched=searched,
        params=args,
        form=request.query_params,
    )


# -- reports, verify -----------------------------------------------------------------------------


def _report_args(request: Request) -> tuple[str, datetime | None, datetime | None] | None:
    name = request.path_params["name"]
    if name not in _CONSOLE_REPORTS:
        return None
    return (
        name,
        _parse_time(request.query_params.get("since")),
        _parse_time(request.query_params.get("until")),
    )


async def reports(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    return render(request, "reports.html", names=_CONSOLE_REPORTS)


async def report(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    parsed = _report_args(request)
    if parsed is None:
        return error(request, 404, "No such report", f"Reports: {', '.join(_CONSOLE_REPORTS)}.")
    name, since, until = parsed
    console: Console = request.app.state.console
    names, rows = await run_in_threadpool(console.audit.report, name, since, until)
    dicts = [dict(zip(names, r, strict=True)) for r in rows]
    return render(
        request,
        "report.html",
        name=name,
        names=names,
        rows=rows,
        chart=bar_chart(per_period(dicts)),
        form=request.query_params,
        names_all=_CONSOLE_REPORTS,
    )


def _csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting like a formula gets a leading quote."""
    from querytrail.escape import terminal

    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        value = json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, str):
        value = terminal(value)
        return "'" + value if value.startswith(_SPREADSHEET_FORMULA) else value
    return value


async def report_csv(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    parsed = _report_args(request)
    if parsed is None:
        return Response("no such report", status_code=404)
    name, since, until = parsed
    console: Console = request.app.state.console
    names, rows = await run_in_threadpool(console.audit.report, name, since, until)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(names)
    writer.writerows([_csv_cell(v) for v in r] for r in rows)
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}.csv"'},
    )


async def verify(request: Request) -> Response:
    if current_session(request) is None:
        return _signin(request)
    console: Console = request.app.state.console
    return render(request, "verify.html", result=console.audit.latest_verify)


async def verify_run(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return _signin(request)
    form = await request.form()
    if not session.csrf_ok(str(form.get("csrf") or "")):
        return error(request, 403, "Refused", "The form's CSRF token is missing or wrong.")
    console: Console = request.app.state.console
    await run_in_threadpool(console.audit.run_verify)
    return RedirectResponse("/verify", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/approvals", approvals),
        Route("/approvals/fragment", approvals_fragment),
        Route("/approvals/{request_id:str}", approval),
        Route("/approvals/{request_id:str}/verdict", verdict, methods=["POST"]),
        Route("/events", events),
        Route("/requests/{request_id:str}", timeline),
        Route("/sessions/{session_id:str}", session_timeline),
        Route("/search", search),
        Route("/reports", reports),
        Route("/reports/{name:str}.csv", report_csv),
        Route("/reports/{name:str}", report),
        Route("/verify", verify),
        Route("/verify/run", verify_run, methods=["POST"]),
    ]
