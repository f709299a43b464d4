"""Key files, key ids and event signatures: the one place that reads, creates and names keys.

Key files are PEM (PKCS#8 private, SubjectPublicKeyInfo public); each public half sits next to
its private key as ``<stem>.pub.pem``. A key id is the first 16 hex digits of SHA-256 over the
raw public key.

Event signatures (docs/security.md): every service signs each record it publishes with its own
Ed25519 key over ``"querytrail-event-v1" 0x00 topic 0x00 value`` (the full topic name and the
exact Avro bytes) and sends the signature and its key id as the Kafka record headers ``qt-sig``
and ``qt-kid``, so the Avro schemas and the codec stay unchanged. Consumers of a signed topic
verify against the public keys the settings trust for that topic (several during a rotation)
and refuse anything else: ``unsigned``, ``unknown_key`` or ``bad_signature``. The domain tag
keeps these signatures apart from the authorisation and attestation signatures made with the
same service keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from querytrail.settings import Settings

__all__ = [
    "KID_HEADER",
    "SERVICE_KEYS",
    "SIGNED_TOPICS",
    "SIG_HEADER",
    "EventSigner",
    "EventVerifier",
    "KeyFileError",
    "SignatureError",
    "ensure_keypair",
    "ensure_service_keys",
    "event_signer",
    "event_verifier",
    "header_value",
    "key_id",
    "load_private",
    "load_public",
    "private_pem",
    "public_path",
    "public_pem",
    "service_key_path",
    "signed_message",
]

log = logging.getLogger(__name__)

SIG_HEADER = "qt-sig"
KID_HEADER = "qt-kid"
_DOMAIN = b"querytrail-event-v1\x00"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw

#: The services that publish events and the key each signs with (a ``Settings.key_path`` name).
#: The worker and the ingress reuse their authorisation/attestation keys (domain-separated).
SERVICE_KEYS: dict[str, str] = {
    "worker": "authz_signing_key",
    "executor": "executor_signing_key",
    "ingress": "ingress_signing_key",
    "notifier": "notifier_signing_key",  # NotificationAttempted on actions
}

#: Topic suffix -> the services allowed to sign its records. ``requests`` (CI callers, proven
#: by their token or the ingress attestation), ``approvals`` (approvers, proven by a sealed
#: token bound to the verdict) and ``deadletter`` are not service-signed.
SIGNED_TOPICS: dict[str, tuple[str, ...]] = {
    "decisions": ("worker",),
    "executions": ("worker", "executor"),
    "results": ("worker", "executor", "ingress"),
    "actions": ("ingress", "notifier"),
    "catalog": ("executor",),
}


class KeyFileError(Exception):
    """A key file that is missing, unreadable or of the wrong kind."""


class SignatureError(Exception):
    """A record that is not signed by a key trusted for its topic; ``reason`` names why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# --- key files -------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    """The first 16 hex digits of SHA-256 over the raw public key."""
    return hashlib.sha256(public_key.public_bytes(*_RAW)).hexdigest()[:16]


def public_path(private_path: Path) -> Path:
    """``keys/foo.pem`` -> ``keys/foo.pub.pem``."""
    return private_path.with_name(private_path.name.removesuffix(".pem") + ".pub.pem")


def private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PrivateKey | X25519PrivateKey | Ed25519PublicKey | X25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey | X25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(path: Path, kind: Any = Ed25519PrivateKey) -> Any:
    """The private key in ``path``; KeyFileError unless it is a ``kind``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the private key ({exc})") from None
    if not isinstance(key, kind):
        raise KeyFileError(f"{path} does not hold a {kind.__name__}")
    return key


def load_public(path: Path, kind: Any = Ed25519PublicKey) -> Any:
    """The public key in ``path``; KeyFileError unless it is a ``kind``."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the public key ({exc})") from None
    if not isinstance(key, kind):
        raise KeyFileError(f"{path} does not hold a {kind.__name__}")
    return key


def ensure_keypair(path: Path, factory: Any = Ed25519PrivateKey.generate) -> bool:
    """Create the private key ``path`` (0600) and its public half when missing; True if created.

    Two processes racing to create the same key both end up with the one that won.
    Only the local stack and the tests rely on creation; production provisions keys.
    """
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # written aside, then linked into place: a racing reader never sees a half-written key
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem(factory()))
        try:
            os.link(tmp, path)
            created = True
            log.info("created key pair %s (public half %s)", path, public_path(path))
        except FileExistsError:
            pass  # another process won the race: its key is the key
        finally:
            tmp.unlink(missing_ok=True)
    pub = public_path(path)
    if not pub.exists():  # recover the public half from the private key
        kind = type(factory())
        tmp = pub.with_name(f".{pub.name}.{os.getpid()}.tmp")
        tmp.write_bytes(public_pem(load_private(path, kind)))
        os.replace(tmp, pub)
    return created


# --- event signatures ------------------------------------------------------------------------


def signed_message(topic: str, value: bytes) -> bytes:
    """The exact bytes an event signature covers: domain tag, full topic name, Avro bytes."""
    return _DOMAIN + topic.encode("utf-8") + b"\x00" + value


def header_value(headers: Any, name: str) -> bytes | None:
    """One header's value from confluent-kafka (list of pairs), aiokafka/faust (list or dict)."""
    if not headers:
        return None
    items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    found = None
    for item in items:
        k, v = item
        if (k.decode("utf-8", "replace") if isinstance(k, bytes) else k) == name:
            if found is not None:
                return b""  # a repeated header is ambiguous: refuse rather than pick one
            found = v.encode("utf-8") if isinstance(v, str) else (v if v is not None else b"")
    return found


class EventSigner:
    """A service's Ed25519 key, signing the records it publishes."""

    def __init__(self, private_key: Ed25519PrivateKey, service: str = "") -> None:
        self.private_key = private_key
        self.service = service
        self.key_id = key_id(private_key.public_key())
        self._kid = self.key_id.encode("ascii")

    def sign(self, topic: str, value: bytes) -> bytes:
        return self.private_key.sign(signed_message(topic, value))

    def headers(self, topic: str, value: bytes) -> list[tuple[str, str | bytes | None]]:
        """The record headers that carry the signature of ``value`` on ``topic``."""
        return [(SIG_HEADER, self.sign(topic, value)), (KID_HEADER, self._kid)]


class EventVerifier:
    """Per full topic name, the public keys allowed to sign its records (by key id)."""

    def __init__(self, trusted: Mapping[str, Iterable[Ed25519PublicKey]]) -> None:
        self._keys: dict[str, dict[str, Ed25519PublicKey]] = {
            topic: {key_id(k): k for k in keys} for topic, keys in trusted.items()
        }

    def covers(self, topic: str) -> bool:
        """True when records of ``topic`` must be signed."""
        return topic in self._keys

    def verify(self, topic: str, value: bytes, headers: Any) -> str | None:
        """The signing key id; SignatureError when the record is not signed by a trusted key.

        Topics the verifier does not cover pass unchecked (None).
        """
        keys = self._keys.get(topic)
        if keys is None:
            return None
        sig, kid = header_value(headers, SIG_HEADER), header_value(headers, KID_HEADER)
        if not sig or not kid:
            raise SignatureError("unsigned", f"record on {topic} carries no {SIG_HEADER}/{KID_HEADER} header")
        name = kid.decode("ascii", "replace")
        key = keys.get(name)
        if key is None:
            raise SignatureError("unknown_key", f"key {name!r} is not trusted to sign {topic}")
        try:
            key.verify(sig, signed_message(topic, value))
        except InvalidSignature:
            raise SignatureError(
                "bad_signature", f"signature by {name} does not verify for {topic}"
            ) from None
        return name


def service_key_path(settings: Settings, service: str) -> Path:
    """The private key a service signs its events with (``signing.keys`` or its default)."""
    configured = settings.signing.keys.get(service)
    if configured is not None:
        return Path(configured)
    return settings.key_path(SERVICE_KEYS[service])


def ensure_service_keys(settings: Settings) -> list[Path]:
    """Create every service's signing key that is missing (local stack and tests only)."""
    return [p for s in SERVICE_KEYS if ensure_keypair(p := service_key_path(settings, s))]


def event_signer(settings: Settings, service: str) -> EventSigner | None:
    """The signer of ``service`` (None for callers that are no service, or signing disabled).

    The local stack creates a missing key; production must provision it.
    """
    if service not in SERVICE_KEYS or not settings.signing.enabled:
        return None
    path = service_key_path(settings, service)
    if settings.environment == "local":
        ensure_keypair(path)
    if not path.exists():
        raise KeyFileError(f"{service}'s event signing key {path} is missing")
    return EventSigner(load_private(path, Ed25519PrivateKey), service)


def _trusted_paths(settings: Settings, suffix: str) -> Sequence[Path]:
    configured = settings.signing.trusted.get(suffix)
    if configured is not None:
        return [Path(p) for p in configured]
    return [public_path(service_key_path(settings, s)) for s in SIGNED_TOPICS.get(suffix, ())]


def event_verifier(settings: Settings, *, service: bool = False) -> EventVerifier:
    """The verifier for ``settings``: every signed topic with the public keys trusted for it.

    Signing disabled: a verifier that covers no topic (everything passes). A missing public
    key file leaves its topic covered with fewer keys (its records are refused, never waved
    through), and is logged. ``service``: the caller is one of the local stack's services, which
    creates the missing dev keys first (a service may start before the one whose key it trusts);
    clients (CI, approvers' CLI) only read the public halves.
    """
    from schemas.topics import topic_names

    if not settings.signing.enabled:
        return EventVerifier({})
    if service and settings.environment == "local":
        ensure_service_keys(settings)
    names = topic_names(settings.kafka.topic_prefix)
    trusted: dict[str, list[Ed25519PublicKey]] = {}
    for suffix in SIGNED_TOPICS.keys() | settings.signing.trusted.keys():
        keys: list[Ed25519PublicKey] = []
        for path in _trusted_paths(settings, suffix):
            try:
                keys.append(load_public(path, Ed25519PublicKey))
            except (OSError, KeyFileError) as exc:
                log.warning(
                    "public key %s for %s unavailable (%s): its records are refused", path, suffix, exc
                )
        if suffix in names:
            trusted[names[suffix]] = keys
    return EventVerifier(trusted)
