"""Properties of event signatures and verdict bindings, pure (no broker): issue 13, items 1 and 2.

For any event on any signed topic, a record that its producer's key did not sign over exactly
these bytes on exactly this topic is refused: no header, a stranger's key, another topic's
producer, a flipped bit in the value, the signature or the key id. And an approver's sealed
token opens only for the verdict it was sealed for; an ingress attestation carries its time.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from querytrail.keys import (
    KID_HEADER,
    SERVICE_KEYS,
    SIG_HEADER,
    SIGNED_TOPICS,
    EventSigner,
    EventVerifier,
    SignatureError,
    ensure_service_keys,
    event_signer,
    event_verifier,
)
from querytrail.sealing import (
    AttestationExpired,
    SealingError,
    attestation_times,
    seal_token,
    sign_attestation,
    unseal_token,
    verdict_binding,
    verify_attestation,
)
from querytrail.settings import Settings
from schemas.codec import EventCodec
from schemas.events import utcnow
from tests.schemas.schemas_strategies import any_event

CODEC = EventCodec()
PREFIX = "qtprop"
SERVICES = {name: Ed25519PrivateKey.generate() for name in SERVICE_KEYS}
VERIFIER = EventVerifier(
    {
        f"{PREFIX}.{suffix}": [SERVICES[s].public_key() for s in producers]
        for suffix, producers in SIGNED_TOPICS.items()
    }
)
TOPICS = sorted(SIGNED_TOPICS)


def _flip(data: bytes, bit: int) -> bytes:
    if not data:
        return b"\x01"
    i = bit % (len(data) * 8)
    out = bytearray(data)
    out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


@st.composite
def _forgeries(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, bytes]] | None]:
    """(topic, value, headers) of a record its topic's producers did not sign as it stands."""
    suffix = draw(st.sampled_from(TOPICS))
    topic = f"{PREFIX}.{suffix}"
    value = CODEC.encode(draw(any_event))
    outsiders = [s for s in SERVICES if s not in SIGNED_TOPICS[suffix]]
    how = draw(
        st.sampled_from(
            [
                "unsigned",
                "stranger",
                "flip_value",
                "flip_sig",
                "flip_kid",
                "other_topic",
                "sig_only",
                "kid_only",
            ]
            + (["outsider"] if outsiders else [])
        )
    )
    genuine = EventSigner(SERVICES[draw(st.sampled_from(SIGNED_TOPICS[suffix]))])
    bit = draw(st.integers(min_value=0, max_value=1 << 20))
    if how == "unsigned":
        return topic, value, None
    if how == "stranger":  # the attacker's own key, with or without a trusted key id
        forged = EventSigner(Ed25519PrivateKey.generate()).headers(topic, value)
        if draw(st.booleans()):
            forged = [forged[0], (KID_HEADER, genuine.key_id.encode())]
        return topic, value, forged  # type: ignore[return-value]
    if how == "outsider":  # a real service key, but not one trusted for this topic
        return topic, value, EventSigner(SERVICES[draw(st.sampled_from(outsiders))]).headers(topic, value)  # type: ignore[return-value]
    headers = dict(genuine.headers(topic, value))
    if how == "flip_value":
        return topic, _flip(value, bit), list(headers.items())  # type: ignore[arg-type]
    if how == "flip_sig":
        headers[SIG_HEADER] = _flip(headers[SIG_HEADER], bit)  # type: ignore[arg-type]
    elif how == "flip_kid":
        headers[KID_HEADER] = _flip(headers[KID_HEADER], bit)  # type: ignore[arg-type]
    elif how == "other_topic":  # signed for another topic: moved, it does not verify
        other = draw(st.sampled_from([t for t in TOPICS if t != suffix]))
        headers = dict(genuine.headers(f"{PREFIX}.{other}", value))
    elif how == "sig_only":
        del headers[KID_HEADER]
    else:
        del headers[SIG_HEADER]
    return topic, value, list(headers.items())  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_forgeries())
def test_any_record_not_signed_by_its_producer_is_refused(forgery: tuple[str, bytes, object]) -> None:
    topic, value, headers = forgery
    with pytest.raises(SignatureError) as caught:
        VERIFIER.verify(topic, value, headers)
    assert caught.value.reason in {"unsigned", "unknown_key", "bad_signature"}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suffix=st.sampled_from(TOPICS), event=any_event, data=st.data())
def test_every_producer_of_a_topic_is_accepted(suffix: str, event: object, data: st.DataObject) -> None:
    topic = f"{PREFIX}.{suffix}"
    value = CODEC.encode(event)  # type: ignore[arg-type]
    service = data.draw(st.sampled_from(SIGNED_TOPICS[suffix]))
    signer = EventSigner(SERVICES[service])
    assert VERIFIER.verify(topic, value, signer.headers(topic, value)) == signer.key_id


def test_rotation_keeps_old_keys_trusted(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verifier = EventVerifier({"p.results": [old.public_key(), new.public_key()]})
    for key in (old, new):
        headers = EventSigner(key).headers("p.results", b"v")
        verifier.verify("p.results", b"v", headers)
    assert not verifier.covers("p.requests")  # callers' requests are proven by their token


def test_settings_trust_each_topic_its_producers_keys(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, kafka={"topic_prefix": "qtk"})  # type: ignore[arg-type]
    ensure_service_keys(s)
    verifier = event_verifier(s)
    for suffix, producers in SIGNED_TOPICS.items():
        topic = f"qtk.{suffix}"
        assert verifier.covers(topic)
        for service in SERVICE_KEYS:
            signer = event_signer(s, service)
            assert signer is not None
            headers = signer.headers(topic, b"x")
            if service in producers:
                verifier.verify(topic, b"x", headers)
            else:
                with pytest.raises(SignatureError):
                    verifier.verify(topic, b"x", headers)
    assert event_signer(s, "cli") is None and event_signer(s, "attacker") is None
    off = Settings(home=tmp_path, signing={"enabled": False})  # type: ignore[arg-type]
    assert event_signer(off, "worker") is None and not event_verifier(off).covers("querytrail.results")


# --- item 2: bindings, not bearer blobs ----------------------------------------------------------


def test_a_sealed_approval_opens_only_for_the_verdict_it_was_sealed_for() -> None:
    worker = X25519PrivateKey.generate()
    fields = ("r1", "approve", "ab" * 32, "ok", "e1")
    sealed = seal_token("tok", worker.public_key(), "r1", verdict_binding(*fields))
    assert unseal_token(sealed, worker, "r1", verdict_binding(*fields)) == "tok"
    for i, other in enumerate(("r2", "deny", "cd" * 32, "other comment", "e2")):
        changed = list(fields)
        changed[i] = other
        with pytest.raises(SealingError):
            unseal_token(sealed, worker, changed[0], verdict_binding(*changed))
    with pytest.raises(SealingError):  # nor as a plain request credential
        unseal_token(sealed, worker, "r1")


def test_an_attestation_carries_issue_time_and_expiry() -> None:
    key = Ed25519PrivateKey.generate()
    now = utcnow()
    fields = {"request_id": "r", "token_sha256": "0" * 64, "claims_json": "{}"}
    blob = sign_attestation(key, sql="select 1", issued_at=now, ttl_s=60, **fields)
    issued, expires = attestation_times(blob)
    assert issued == now and expires == now + timedelta(seconds=60)
    assert verify_attestation(key.public_key(), blob, sql="select 1", now=now, **fields) == (issued, expires)
    with pytest.raises(AttestationExpired):  # a late replay of an old request
        verify_attestation(key.public_key(), blob, sql="select 1", now=now + timedelta(seconds=61), **fields)
    tampered = blob[:9] + (int.from_bytes(blob[9:17], "big") + 10**9).to_bytes(8, "big") + blob[17:]
    with pytest.raises(SealingError):  # the expiry is signed: it cannot be extended
        verify_attestation(key.public_key(), tampered, sql="select 1", now=now, **fields)
    with pytest.raises(SealingError):  # an attestation without a time is refused
        verify_attestation(key.public_key(), blob[17:], sql="select 1", now=now, **fields)
