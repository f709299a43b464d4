"""The worker's long-lived dependencies: keys, identity checker, policy and catalog (reloadable).

Kept apart from the faust app so the same objects serve any loop (and tests) unchanged. The
policy is reloaded when its file changes; an invalid file is refused with its line and reason
(logged at ERROR) and the last valid policy stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from processors.decision.authz import load_or_create_signing_key
from processors.decision.policy import Policy, PolicyError, load_policy
from processors.decision.requests import WorkerConfig
from processors.decision.warehouse_catalog import Catalog, ColumnInfo, TableInfo
from processors.worker.credentials import CredentialChecker
from querytrail.keys import SignatureError, event_verifier
from querytrail.publishing import Publisher, read_topic
from querytrail.settings import Settings
from schemas.codec import DecodeError, EventCodec
from schemas.events import CatalogTable

__all__ = ["WorkerRuntime", "catalog_from_events", "default_policy_path"]

log = logging.getLogger(__name__)


def default_policy_path() -> Path:
    return Path(__file__).resolve().parents[2] / "infra" / "policies" / "example.yaml"


def catalog_from_events(events: list[CatalogTable]) -> Catalog:
    """The latest CatalogTable per table (by occurred_at), tombstones removed."""
    latest: dict[str, CatalogTable] = {}
    for e in events:
        if e.table not in latest or latest[e.table].occurred_at <= e.occurred_at:
            latest[e.table] = e
    return Catalog.from_tables(
        TableInfo(
            name=e.table,
            columns=tuple(ColumnInfo(c.name, c.type, c.classification) for c in e.columns),
            row_count=e.row_count,
            bytes=e.bytes,
        )
        for e in latest.values()
        if not e.deleted
    )


class WorkerRuntime:
    """Everything the worker's agents call into; ``load()`` reads keys, policy and catalog."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = EventCodec(settings.kafka.schema_registry_url)
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()
        self.policy_path = settings.policy_path or default_policy_path()
        self._policy: Policy | None = None
        self._policy_digest: str | None = None
        self._catalog = Catalog.from_tables(())
        self._catalog_loaded_at = 0.0
        self.checker: Any = None
        self.config: Any = None
        self.records = event_verifier(settings, service=True)  # who may sign the records the worker reads
        self._refused: set[tuple[str, int, int]] = set()

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.settings, "worker", self.codec)
        return self._publisher

    @property
    def policy(self) -> Policy:
        assert self._policy is not None, "load() first"
        return self._policy

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def faust_credentials(self) -> Any:
        k = self.settings.kafka
        if k.sasl_mechanism and k.sasl_username:
            import faust

            return faust.SASLCredentials(
                username=k.sasl_username,
                password=k.sasl_password.get_secret_value() if k.sasl_password else None,
                mechanism=k.sasl_mechanism,
            )
        return None

    def load(self) -> None:
        """Keys, identity verifier, the policy (must be valid at start) and the catalog."""
        from querytrail import sealing
        from querytrail.identity import TokenVerifier

        s = self.settings
        if s.environment == "local":
            sealing.ensure_keys(s)  # dev keys only; production provisions them
        signing_path = s.key_path("authz_signing_key")
        if s.environment != "local" and not signing_path.exists():
            raise FileNotFoundError(f"authorisation signing key {signing_path} is missing")
        signer = load_or_create_signing_key(signing_path, sealing.public_path(signing_path))
        sealing_key = sealing.load_sealing_private_key(s)
        attestation: dict[str, Any] = {}
        try:
            pub = sealing.load_attestation_public_key(s)
            attestation[sealing.key_id(pub)] = pub
        except (OSError, sealing.SealingError) as exc:
            log.warning("no ingress attestation key (%s): attested requests will be refused", exc)
        self.checker = CredentialChecker(TokenVerifier.from_settings(s), sealing_key, attestation)
        self.config = WorkerConfig(
            signer=signer,
            statement_timeout_s=s.executor.statement_timeout_s,
            authorization_ttl_s=s.worker.authorization_ttl_s,
            max_prompt_bytes=s.limits.max_prompt_bytes,
            max_sql_bytes=s.limits.max_sql_bytes,
        )
        if not self.maybe_reload_policy():
            raise RuntimeError(f"no valid policy at {self.policy_path}")
        self.maybe_reload_catalog()

    def _refused_catalog(self, msg: Any, exc: SignatureError) -> None:
        where = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        if where not in self._refused:  # the topic is re-read every reload: log each record once
            self._refused.add(where)
            log.warning("catalog record %s[%d]@%d refused: %s", *where, exc)

    def maybe_reload_policy(self) -> bool:
        """Reload when the file's bytes changed. True when a valid policy is in force."""
        try:
            digest = hashlib.sha256(self.policy_path.read_bytes()).hexdigest()
        except OSError as exc:
            log.error("policy file %s unreadable (%s); keeping the last valid policy", self.policy_path, exc)
            return self._policy is not None
        if digest == self._policy_digest:
            return True
        try:
            policy = load_policy(self.policy_path)
        except PolicyError as exc:
            log.error("policy reload refused, keeping the last valid policy: %s", exc)
            self._policy_digest = digest  # do not re-log the same broken file every tick
            return self._policy is not None
        with self._lock:
            old = self._policy.sha256 if self._policy else None
            self._policy, self._policy_digest = policy, digest
        log.info("policy %s loaded (sha256 %s, was %s)", self.policy_path, policy.sha256, old)
        return True

    def reload_catalog_if_due(self) -> None:
        """Reload when the catalog is empty or ``catalog_reload_s`` passed since the last load."""
        due = time.monotonic() - self._catalog_loaded_at >= self.settings.worker.catalog_reload_s
        if due or not self._catalog.tables:
            self.maybe_reload_catalog()

    def maybe_reload_catalog(self) -> None:
        """The static catalog file when configured, else the compacted catalog topic."""
        s = self.settings
        self._catalog_loaded_at = time.monotonic()
        try:
            if s.catalog_path is not None:
                catalog = Catalog.load(s.catalog_path)
            else:
                events: list[CatalogTable] = []
                records = self.records
                for msg in read_topic(s, "catalog"):
                    try:
                        event = self.codec.decode(msg.value() or b"")
                        records.verify(msg.topic() or "", msg.value() or b"", msg.headers())
                    except DecodeError:
                        continue  # the executor's own topic; a bad record is the sink's dead letter
                    except SignatureError as exc:
                        # a catalog entry the executor did not sign would switch masking off:
                        # refused here, dead-lettered by the sink (the topic's only other reader)
                        self._refused_catalog(msg, exc)
                        continue
                    if isinstance(event, CatalogTable):
                        events.append(event)
                catalog = catalog_from_events(events)
        except Exception:
            log.exception("catalog reload failed; keeping the previous catalog")
            return
        if catalog.version != self._catalog.version:
            self._catalog = catalog
            log.info("catalog loaded: %d table(s), version %s", len(catalog.tables), catalog.version[:12])
