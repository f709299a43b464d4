"""The CI client: submit a QueryRequested straight to Kafka and wait for its outcome.

The raw token is sealed to the worker's X25519 public key (``querytrail.sealing``) so it never
sits in clear on a topic; the request carries its SHA-256 in clear for correlation. The
waiter reads the decisions and results topics from the log-end offsets taken *before* the
request is produced, so no outcome can slip between producing and subscribing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ingress.indexer import assign_from
from ingress.outcomes import RequestOutcome
from querytrail.keys import SignatureError, event_verifier
from querytrail.sealing import load_sealing_public_key, seal_token, token_sha256
from querytrail.settings import Settings
from schemas.events import envelope
from schemas.topics import topic_names

if TYPE_CHECKING:
    from schemas.events import ClientContext

__all__ = [
    "ClientError",
    "QueryClient",
    "Submission",
    "ci_context_from_env",
    "fetch_github_actions_token",
]

log = logging.getLogger(__name__)


class ClientError(Exception):
    """A usage or environment problem on the client side (exit code 2)."""


def ci_context_from_env(env: Mapping[str, str] | None = None) -> ClientContext:
    """ClientContext from GitHub Actions or GitLab CI variables (``local`` when neither is set)."""
    from schemas.events import ClientContext

    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true" or "GITHUB_RUN_ID" in env:
        return ClientContext(
            ci_provider="github-actions",
            repository=env.get("GITHUB_REPOSITORY"),
            workflow=env.get("GITHUB_WORKFLOW"),
            run_id=env.get("GITHUB_RUN_ID"),
            commit=env.get("GITHUB_SHA"),
            ref=env.get("GITHUB_REF"),
            actor=env.get("GITHUB_ACTOR"),
            extra={k: env[k] for k in ("GITHUB_RUN_ATTEMPT", "GITHUB_JOB") if k in env},
        )
    if env.get("GITLAB_CI") == "true" or "CI_PIPELINE_ID" in env:
        return ClientContext(
            ci_provider="gitlab-ci",
            repository=env.get("CI_PROJECT_PATH"),
            workflow=env.get("CI_JOB_NAME"),
            run_id=env.get("CI_PIPELINE_ID"),
            commit=env.get("CI_COMMIT_SHA"),
            ref=env.get("CI_COMMIT_REF_NAME"),
            actor=env.get("GITLAB_USER_LOGIN"),
            extra={k: env[k] for k in ("CI_JOB_ID",) if k in env},
        )
    return ClientContext(ci_provider="local", extra={})


def fetch_github_actions_token(
    audience: str = "querytrail", env: Mapping[str, str] | None = None, timeout_s: float = 10.0
) -> str:
    """Ask the GitHub Actions OIDC endpoint for an ID token (needs ``permissions: id-token: write``)."""
    env = os.environ if env is None else env
    url, bearer = env.get("ACTIONS_ID_TOKEN_REQUEST_URL"), env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    if not url or not bearer:
        raise ClientError(
            "ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN are not set: run inside GitHub Actions "
            "with 'permissions: id-token: write'"
        )
    try:
        # The URL already carries a query (api-version); params= would replace it, so merge.
        resp = httpx.get(
            httpx.URL(url).copy_merge_params({"audience": audience}),
            headers={"Authorization": f"bearer {bearer}", "Accept": "application/json"},
            timeout=timeout_s,
        )
        resp.raise_for_status()
        value = resp.json().get("value")
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise ClientError(f"cannot fetch a GitHub Actions OIDC token: {type(exc).__name__}") from None
    if not isinstance(value, str) or not value:
        raise ClientError("the GitHub Actions OIDC endpoint returned no token")
    return value


class Submission:
    """A submitted request and the consumer positioned to see its outcome."""

    def __init__(self, request_id: str, consumer: Any, codec: Any, records: Any = None) -> None:
        self.request_id = request_id
        self.outcome = RequestOutcome(request_id)
        self._consumer = consumer
        self._codec = codec
        self._records = records  # an EventVerifier: only what the services signed is an outcome

    def wait(
        self, timeout_s: float, on_update: Callable[[RequestOutcome], None] | None = None
    ) -> RequestOutcome:
        """Fold matching events in until the outcome is terminal or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while not self.outcome.terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msg = self._consumer.poll(min(remaining, 0.5))
            if msg is None or msg.error() is not None:
                continue
            if msg.key() != self.request_id.encode("utf-8"):
                continue  # another request's event: not decoded at all
            try:
                event = self._codec.decode(msg.value())
            except Exception:  # a corrupt record on a shared topic must not end our wait
                log.warning("undecodable record on %s", msg.topic(), extra={"request_id": self.request_id})
                continue
            if event.request_id != self.request_id:
                continue
            if self._records is not None:
                try:
                    self._records.verify(msg.topic() or "", msg.value() or b"", msg.headers())
                except SignatureError as exc:
                    log.warning(
                        "refusing record on %s: %s", msg.topic(), exc, extra={"request_id": self.request_id}
                    )
                    continue
            before = self.outcome.status
            self.outcome.apply(event)
            if on_update is not None and self.outcome.status != before:
                on_update(self.outcome)
        return self.outcome

    def close(self) -> None:
        self._consumer.close()


class QueryClient:
    """Produces QueryRequested with a sealed token; one instance per CI step."""

    def __init__(self, settings: Settings) -> None:
        from schemas.codec import EventCodec

        self.settings = settings
        self.codec = EventCodec(settings.kafka.schema_registry_url)
        names = topic_names(settings.kafka.topic_prefix)
        self.requests_topic = names["requests"]
        self.outcome_topics = [names["decisions"], names["results"]]
        try:
            self._worker_key = load_sealing_public_key(settings)
        except FileNotFoundError as exc:
            raise ClientError(f"the worker's public sealing key is missing: {exc.filename}") from None

    def build_request(
        self,
        *,
        request_id: str,
        prompt: str,
        sql: str,
        model: str,
        token: str,
        target: Any,
        context: Any,
        session_id: str | None = None,
        max_rows: int | None = None,
    ) -> Any:
        from schemas.events import Credential, QueryRequested

        return QueryRequested(
            **envelope(request_id, "cli", session_id=session_id),
            prompt=prompt,
            model=model,
            sql=sql,
            target=target,
            context=context,
            credential=Credential(
                sealed_token=seal_token(token, self._worker_key, request_id),
                token_sha256=token_sha256(token),
            ),
            max_rows=max_rows,
        )

    def submit(self, *, token: str, request_id: str | None = None, **fields: Any) -> Submission:
        """Position a waiter at the current log ends, then produce the request (acks=all)."""
        from querytrail.kafka_clients import make_consumer, make_producer, produce_sync
        from schemas.codec import key_for
        from schemas.events import new_event_id

        request_id = request_id or new_event_id()
        event = self.build_request(request_id=request_id, token=token, **fields)
        consumer = make_consumer(self.settings.kafka, f"querytrail-submit-{uuid.uuid4().hex[:12]}")
        try:
            assign_from(consumer, self.outcome_topics, timestamp_ms=None)
            producer = make_producer(self.settings.kafka)
            produce_sync(
                producer,
                self.requests_topic,
                self.codec.encode(event),
                key=key_for(event),
                timeout=self.settings.kafka.delivery_timeout_s,
            )
            producer.flush(5.0)
        except BaseException:
            consumer.close()
            raise
        log.info("submitted request to %s", self.requests_topic, extra={"request_id": request_id})
        return Submission(request_id, consumer, self.codec, event_verifier(self.settings))
