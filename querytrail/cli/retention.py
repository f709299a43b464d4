"""``querytrail audit expire`` and ``querytrail audit rotate-key``: keeping the log for months.

Both need the chain signing key (the sink's): run them where the sink runs. ``expire`` first
runs the full ``verify`` and refuses on any problem, so a signed anchor never vouches for a
tampered table.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from querytrail.settings import Settings
    from sinks.verify import VerifyReport

__all__ = ["register", "run_verify"]


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="retention and key rotation of the audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    p = sub.add_parser("expire", help="expire old snapshots behind a signed retention anchor (rows stay)")
    p.add_argument("--keep", type=int, required=True, help="keep this many newest snapshots (at least 1)")
    p.add_argument("--older-than", type=_date, help="and only expire snapshots committed before this date")
    p.add_argument("--by", default=None, help="who expires, recorded in the anchor (default: the OS user)")
    p.add_argument(
        "--no-witness-topic",
        action="store_true",
        help="verify without comparing the witness file with the witness topic",
    )
    p.set_defaults(func=_expire)

    p = sub.add_parser("rotate-key", help="replace the chain signing key; old public keys stay trusted")
    p.add_argument("--by", default=None, help="who rotates, recorded in the handover (default: the OS user)")
    p.set_defaults(func=_rotate)


def run_verify(settings: Settings, since: datetime | None, no_witness_topic: bool) -> VerifyReport | str:
    """The verify report of the configured table with the keyring, or an error text."""
    from pyiceberg.exceptions import NoSuchTableError

    from schemas.codec import EventCodec
    from sinks.consumer import witness_path
    from sinks.keyring import load_keyring
    from sinks.table import open_table
    from sinks.verify import Problem, verify_table

    try:
        tbl = open_table(settings)
    except NoSuchTableError:
        return f"no audit table {settings.iceberg.table}"
    keyring = load_keyring(settings.key_path("chain_verify_key"))
    codec = EventCodec(settings.kafka.schema_registry_url)
    published = None
    if not no_witness_topic:
        from sinks.witness import read_witness_topic

        try:
            published = read_witness_topic(settings)
        except Exception as exc:  # named, and verify fails: the topic is the witness's anchor
            return f"cannot read the witness topic ({exc}); --no-witness-topic skips it"
    report = verify_table(
        tbl, keyring.verifier, codec.decode, witness_path(settings), since=since, published=published
    )
    report.notes[:0] = keyring.rotations
    report.problems.extend(Problem("keyring", "chain keyring", text) for text in keyring.ignored)
    return report


def _expire(args: argparse.Namespace) -> int:
    from querytrail.escape import terminal
    from querytrail.settings import get_settings
    from sinks.chain import load_signer
    from sinks.retention import ExpiryError, expire
    from sinks.table import open_table

    settings = get_settings()
    report = run_verify(settings, None, args.no_witness_topic)
    if isinstance(report, str):
        print(report, file=sys.stderr)
        return 1
    if not report.ok:
        print(
            f"refusing to expire: verify FAILED ({len(report.problems)} problem(s)); first:", file=sys.stderr
        )
        print(f"  {terminal(str(report.problems[0]), 500)}", file=sys.stderr)
        return 1
    signer = load_signer(settings.key_path("chain_signing_key"))
    try:
        result = expire(open_table(settings), signer, args.keep, args.by or _operator(), args.older_than)
    except ExpiryError as exc:
        print(f"refusing to expire: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from querytrail.settings import get_settings
    from sinks.keyring import keyring_dir, rotate

    settings = get_settings()
    verify_path = settings.key_path("chain_verify_key")
    old, new = rotate(settings.key_path("chain_signing_key"), verify_path, args.by or _operator())
    print(
        json.dumps(
            {"old_key_id": old, "new_key_id": new, "keyring": str(keyring_dir(verify_path))},
        )
    )
    print("restart the sink so it signs with the new key", file=sys.stderr)
    return 0
