"""Chain signing key rotation: a keyring of public keys linked by signed handovers.

The keyring is the directory ``chain-keyring/`` next to the chain verify key: one
``<key id>.pub.pem`` per key the sink ever signed with, and ``handovers.jsonl``, one line per
rotation: ``{"type", "old", "new", "at", "by", "sig_old", "sig_new"}``, where the old key
signs the handover to the new one and the new key countersigns it (both over the line without
its signatures).

``load_keyring`` trusts the configured verify key and every key a valid handover links to a
trusted key, in either direction; a public key in the directory that no valid handover links
is not trusted. So heads signed before a rotation still verify, and someone who can write the
table (or drop a file in the directory) but holds no trusted private key cannot make verify
accept a key of their own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from querytrail import keys
from sinks.chain import HeadSigner, HeadVerifier, load_signer, load_verifier

__all__ = ["HANDOVERS", "Keyring", "keyring_dir", "load_keyring", "rotate"]

HANDOVERS = "handovers.jsonl"
_TYPE = "querytrail-chain-key-handover-v1"


def keyring_dir(verify_key_path: Path) -> Path:
    """``keys/chain_verify_key.pem`` -> ``keys/chain-keyring/``."""
    return verify_key_path.parent / "chain-keyring"


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass
class Keyring:
    """The verifier over every trusted key, the rotations that linked them, and what was ignored."""

    verifier: HeadVerifier
    rotations: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rotate(private_path: Path, verify_path: Path, by: str) -> tuple[str, str]:
    """Replace the chain signing key with a new one; (old key id, new key id).

    Order matters for a crash: the keyring (old and new public keys, the signed handover) is
    written first, then the private key, then the verify key; at every point verify trusts
    both keys. The old private key is overwritten: heads it signed stay verifiable through
    its public key in the keyring. A running sink keeps signing with the old key until it is
    restarted, which is also verifiable.
    """
    old = load_signer(private_path)
    old_private: Ed25519PrivateKey = old._private
    new_private = Ed25519PrivateKey.generate()
    new = HeadSigner(new_private)
    ring = keyring_dir(verify_path)
    ring.mkdir(parents=True, exist_ok=True)
    for signer, private in ((old, old_private), (new, new_private)):
        pub = ring / f"{signer.key_id}.pub.pem"
        if not pub.exists():
            _write_atomic(pub, keys.public_pem(private), 0o644)
    body = {
        "type": _TYPE,
        "old": old.key_id,
        "new": new.key_id,
        "at": datetime.now(UTC).isoformat(),
        "by": by,
    }
    line = _canonical(
        {**body, "sig_old": old.sign_bytes(_canonical(body)), "sig_new": new.sign_bytes(_canonical(body))}
    )
    with open(ring / HANDOVERS, "ab") as fh:
        fh.write(line + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    _write_atomic(private_path, keys.private_pem(new_private), 0o600)
    _write_atomic(keys.public_path(private_path), keys.public_pem(new_private), 0o644)
    if verify_path != keys.public_path(private_path):
        _write_atomic(verify_path, keys.public_pem(new_private), 0o644)
    return old.key_id, new.key_id


def _public(ring: Path, kid: str) -> Ed25519PublicKey | None:
    path = ring / f"{kid}.pub.pem"
    try:
        public = keys.load_public(path, Ed25519PublicKey)
    except (OSError, keys.KeyFileError):
        return None
    return public if keys.key_id(public) == kid else None


def load_keyring(verify_path: Path) -> Keyring:
    """The configured verify key plus every key a valid handover links to it."""
    verifier = load_verifier(verify_path)
    out = Keyring(verifier)
    ring = keyring_dir(verify_path)
    path = ring / HANDOVERS
    if not path.exists():
        return out
    handovers: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
            body = {k: entry[k] for k in ("type", "old", "new", "at", "by")}
            sigs = (str(entry["sig_old"]), str(entry["sig_new"]))
        except (ValueError, KeyError, TypeError):
            out.ignored.append(f"handover line {number}: not a handover")
            continue
        if body["type"] != _TYPE:
            out.ignored.append(f"handover line {number}: not a handover")
            continue
        handovers.append((number, {**body, "sigs": sigs}))
    changed = True
    linked: set[int] = set()
    while changed:  # links can arrive in any order: repeat until nothing new is trusted
        changed = False
        for number, h in handovers:
            if number in linked:
                continue
            old, new = str(h["old"]), str(h["new"])
            if not (verifier.knows(old) or verifier.knows(new)):
                continue
            old_pub, new_pub = _public(ring, old), _public(ring, new)
            if old_pub is None or new_pub is None:
                continue  # a removed key: whatever it signed no longer verifies
            message = _canonical({k: h[k] for k in ("type", "old", "new", "at", "by")})
            probe = HeadVerifier(old_pub)
            probe.add(new_pub)
            if not (
                probe.check_bytes(message, h["sigs"][0], old)
                and probe.check_bytes(message, h["sigs"][1], new)
            ):
                out.ignored.append(f"handover line {number}: bad signature ({old} -> {new})")
                linked.add(number)
                continue
            verifier.add(old_pub)
            verifier.add(new_pub)
            out.rotations.append(f"chain key {old} handed over to {new} at {h['at']}")
            linked.add(number)
            changed = True
    return out
