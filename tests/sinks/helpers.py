"""Writing events into a temporary audit table without a broker, for the table-level tests."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from querytrail.settings import Settings
from schemas.codec import EventCodec, key_for
from sinks.chain import ensure_keypair, load_signer, load_verifier
from sinks.consumer import witness_path
from sinks.table import load_or_create_table
from sinks.verify import VerifyReport, verify_table
from sinks.writer import IcebergSink, Record

CODEC = EventCodec()


def local_settings(home: Path, **overrides: Any) -> Settings:
    return Settings(home=home, **overrides)


def make_sink(settings: Settings) -> IcebergSink:
    private, public = settings.key_path("chain_signing_key"), settings.key_path("chain_verify_key")
    ensure_keypair(private, public)
    return IcebergSink(
        load_or_create_table(settings), load_signer(private), CODEC.decode, witness_path(settings)
    )


def write_events(
    sink: IcebergSink,
    events: Iterable[Any],
    topic: str = "qt.log",
    partitions: int = 2,
    per_flush: int = 10,
    raw: Iterable[bytes] = (),
) -> None:
    """Append events over partitions by key, flushing every ``per_flush`` records."""
    next_offset = {p: sink.state.offsets.get(f"{topic}:{p}", 0) for p in range(partitions)}
    items = [(key_for(e), CODEC.encode(e)) for e in events] + [(b"junk", r) for r in raw]
    for n, (key, value) in enumerate(items):
        p = zlib.crc32(key) % partitions  # one request's events share a partition, as with murmur2
        sink.add(Record(topic, p, next_offset[p], key, value, 0))
        next_offset[p] += 1
        if (n + 1) % per_flush == 0:
            sink.flush()
    sink.flush()


def verify(settings: Settings, **kwargs: Any) -> VerifyReport:
    from sinks.table import open_table

    return verify_table(
        open_table(settings),
        load_verifier(settings.key_path("chain_verify_key")),
        CODEC.decode,
        witness_path(settings),
        **kwargs,
    )
