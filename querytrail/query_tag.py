"""The QUERY_TAG querytrail sets on every statement: a JSON object Snowflake keeps in QUERY_HISTORY.

Snowflake stores the tag verbatim (at most 2,000 characters, docs.snowflake.com "QUERY_TAG") next
to each statement in ``QUERY_HISTORY`` and ``ACCESS_HISTORY`` joins on the query id, so the tag
tells anyone reading Snowflake's own records which request, identity, model, repository and CI
run a statement belongs to, and ``querytrail reconcile`` matches history against the audit log
by it. Fields (short keys keep room for the untrusted ones):

``qt`` (the querytrail version; its presence marks the statement as querytrail's), ``request_id``,
``subject``, ``issuer``, ``service_account``, ``actor``, ``model``, ``repository``, ``run_id``,
``policy_sha256``.

Everything the caller states (model, repository, run id) and even claims (subject, actor) is
untrusted text: it is encoded with ``ensure_ascii`` (no raw control, bidi or non-ASCII
character reaches a console that shows the tag), and the longest untrusted values are cut, with
an ellipsis, until the whole object fits the limit. The request id and policy hash are ours.
"""

from __future__ import annotations

import json
from typing import Any

from querytrail import __version__

__all__ = ["MAX_TAG_CHARS", "build_query_tag", "executor_tag", "parse_query_tag"]

MAX_TAG_CHARS = 2000
_UNTRUSTED = ("subject", "issuer", "actor", "model", "repository", "run_id")
_FIRST_CUT = 256  # no single untrusted value needs more to be recognised


def _dump(tag: dict[str, Any]) -> str:
    return json.dumps(tag, ensure_ascii=True, separators=(",", ":"))


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: max(limit - 1, 0)] + "\u2026"


def build_query_tag(
    request_id: str,
    *,
    subject: str | None = None,
    issuer: str | None = None,
    service_account: bool | None = None,
    actor: str | None = None,
    model: str | None = None,
    repository: str | None = None,
    run_id: str | None = None,
    policy_sha256: str | None = None,
    version: str = __version__,
) -> str:
    """The tag as a JSON string of at most MAX_TAG_CHARS characters.

    >>> build_query_tag("r1", subject="ci-bot", model="m")
    '{"qt":"0.1.0","request_id":"r1","subject":"ci-bot","model":"m"}'
    """
    tag: dict[str, Any] = {"qt": version, "request_id": request_id[:128]}
    untrusted = {
        "subject": subject,
        "issuer": issuer,
        "actor": actor,
        "model": model,
        "repository": repository,
        "run_id": run_id,
    }
    for key in ("subject", "issuer"):
        if untrusted[key] is not None:
            tag[key] = _cut(str(untrusted[key]), _FIRST_CUT)
    if service_account is not None:
        tag["service_account"] = bool(service_account)
    for key in ("actor", "model", "repository", "run_id"):
        if untrusted[key] is not None:
            tag[key] = _cut(str(untrusted[key]), _FIRST_CUT)
    if policy_sha256:
        tag["policy_sha256"] = policy_sha256[:64]
    limit = _FIRST_CUT
    text = _dump(tag)
    while len(text) > MAX_TAG_CHARS and limit > 8:
        limit //= 2  # escaping can make a value up to six times longer: halve until it fits
        for key in _UNTRUSTED:
            if key in tag:
                tag[key] = _cut(tag[key], limit)
        text = _dump(tag)
    if len(text) > MAX_TAG_CHARS:  # cannot happen with the fields above; never send a longer tag
        text = _dump({"qt": version, "request_id": request_id[:128]})
    return text


def parse_query_tag(text: str | None) -> dict[str, Any] | None:
    """A querytrail tag read back from QUERY_HISTORY, or None when it is not one of ours."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or "qt" not in value or not isinstance(value.get("request_id"), str):
        return None
    return value


def executor_tag(auth: Any) -> str:
    """The tag for an ExecutionAuthorized: the signed one the worker built, or, for an
    authorisation from before tags were records, one from what the authorisation itself holds."""
    signed = getattr(auth, "query_tag", None)
    if isinstance(signed, str) and signed and len(signed) <= MAX_TAG_CHARS:
        return signed
    who = auth.requester
    return build_query_tag(
        auth.request_id,
        subject=who.subject if who else None,
        issuer=who.issuer if who else None,
        service_account=who.service_account if who else None,
        actor=who.actor if who else None,
    )
