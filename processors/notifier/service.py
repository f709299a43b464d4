"""The notifier: approval requests and their resolutions to webhooks, every try into the audit log.

Reads the decisions topic (consumer group ``<prefix>.notifier``), keeps ApprovalRequested and
ApprovalResolved whose worker signature verifies, and for each webhook configured for the
rule or an approver group (``settings.notifications``) delivers the note with
``processors.notifier.bodies.deliver``; every try is published as a ``NotificationAttempted`` on the
actions topic (signed by the notifier), which the audit sink archives. Offsets are committed
after the attempts are acknowledged: at least once, with a redelivered event's notes sent
again only if this process did not send them already (an in-memory set of event ids).

Bounded: a webhook takes at most ``max_attempts`` tries of ``timeout_s`` each with backoff
capped by ``max_delay_s``; a receiver that hangs or fails is recorded and skipped, never
retried forever, and no receiver error reaches the loop.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from processors.notifier.bodies import Attempt, Note, WebhookTarget, deliver, load_targets, targets_for
from querytrail.settings import Settings
from schemas.events import Event, NotificationAttempted, new_event_id, producer, utcnow

__all__ = ["Notifier", "http_post", "main", "run"]

log = logging.getLogger(__name__)

_KINDS = ("ApprovalRequested", "ApprovalResolved")
_REMEMBER = 10_000  # pending requests and sent event ids kept in memory


def http_post(timeout_s: float) -> Callable[[str, bytes, dict[str, str]], int]:
    """``post(url, body, headers) -> status`` over httpx; redirects are not followed."""
    import httpx

    client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        return client.post(url, content=body, headers=headers).status_code

    return post


class Notifier:
    """Decides which webhooks hear of an event and records each try; no Kafka in here."""

    def __init__(
        self,
        settings: Settings,
        targets: list[WebhookTarget],
        publish: Callable[[list[Event]], None],
        post: Callable[[str, bytes, dict[str, str]], int],
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.targets = targets
        self.publish = publish
        self.post = post
        self.sleep = sleep
        self._pending: OrderedDict[str, Note] = OrderedDict()
        self._sent: OrderedDict[str, None] = OrderedDict()

    def handle(self, event: Any) -> list[Attempt]:
        """Notify the webhooks of ``event`` (other event types: nothing); the tries made."""
        if event.event_type not in _KINDS or event.event_id in self._sent:
            return []
        cfg = self.settings.notifications
        note = Note.from_event(event, cfg.console_url, self._pending.get(event.request_id))
        if event.event_type == "ApprovalRequested":
            _remember(self._pending, event.request_id, note)
        else:
            self._pending.pop(event.request_id, None)
        tries: list[Attempt] = []

        def record(attempt: Attempt) -> None:
            # published before the next try: a crash mid-retry still leaves the tries made
            self.publish([_event(attempt, note)])

        for target in targets_for(note, self.targets):
            kw: dict[str, Any] = {"sleep": self.sleep} if self.sleep is not None else {}
            attempts = deliver(
                target,
                note,
                self.post,
                max_attempts=cfg.max_attempts,
                base_delay_s=cfg.base_delay_s,
                max_delay_s=cfg.max_delay_s,
                on_attempt=record,
                **kw,
            )
            last = attempts[-1]
            level = logging.INFO if last.outcome == "delivered" else logging.WARNING
            log.log(
                level,
                "request %s: %s to %s %s after %d tries",
                note.request_id,
                note.event_type,
                target.name,
                last.outcome,
                len(attempts),
            )
            tries += attempts
        _remember(self._sent, event.event_id, None)
        return tries


def _remember(store: OrderedDict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > _REMEMBER:
        store.popitem(last=False)


def _event(attempt: Attempt, note: Note) -> NotificationAttempted:
    return NotificationAttempted(
        event_id=new_event_id(),
        request_id=note.request_id,
        occurred_at=utcnow(),
        producer=producer("notifier"),
        notified_event_id=note.event_id,
        notified_event_type=note.event_type,
        target=attempt.target,
        kind=attempt.kind,
        redacted_url=attempt.redacted_url,
        attempt=attempt.attempt,
        status_code=attempt.status_code,
        error_class=attempt.error_class,
        outcome=attempt.outcome,
    )


def run(settings: Settings, stop: threading.Event, *, sleep: Callable[[float], None] | None = None) -> None:
    """Consume decisions until ``stop`` is set. Undecodable or unsigned records are skipped (logged)."""
    from querytrail.keys import SignatureError, event_verifier
    from querytrail.publishing import Publisher
    from schemas.codec import EventCodec
    from schemas.topics import topic_names

    targets = load_targets(settings.notifications.webhooks)
    publisher = Publisher(settings, "notifier")
    codec = EventCodec(settings.kafka.schema_registry_url)
    verifier = event_verifier(settings)
    notifier = Notifier(
        settings, targets, publisher.publish, http_post(settings.notifications.timeout_s), sleep=sleep
    )
    from querytrail.kafka_clients import make_consumer

    topic = topic_names(settings.kafka.topic_prefix)["decisions"]
    consumer = make_consumer(settings.kafka, group_id=f"{settings.kafka.topic_prefix}.notifier")
    consumer.subscribe([topic])
    log.info("notifier: %d webhook(s), reading %s", len(targets), topic)
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            try:
                verifier.verify(topic, msg.value() or b"", msg.headers())
                event = codec.decode(msg.value() or b"")
            except SignatureError as exc:
                log.warning("notifier: skipping a record at %s/%d: %s", topic, msg.offset(), exc.reason)
            except Exception as exc:
                log.warning(
                    "notifier: skipping an undecodable record at %s/%d: %s",
                    topic,
                    msg.offset(),
                    type(exc).__name__,
                )
            else:
                notifier.handle(event)
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()


def main(settings: Settings) -> int:
    """``querytrail notifier``: run until SIGTERM/SIGINT; exit 2 on a bad webhook configuration."""
    import signal

    from processors.notifier.bodies import NotifyConfigError
    from querytrail.observability import configure_logging

    configure_logging("notifier", settings.log_level, settings.log_format)
    try:
        load_targets(settings.notifications.webhooks)
    except NotifyConfigError as exc:
        log.error("notifier: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, stop)
    return 0
