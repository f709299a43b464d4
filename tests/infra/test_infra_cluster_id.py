"""KRaft cluster ids. A random id starting with '-' once failed a CI run: the storage tool's
argument parser read ``-t -xyz...`` as two flags. Ids are now made as Kafka's Uuid.randomUuid()
makes them (never a leading '-') and passed as ``--cluster-id=ID`` besides."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from infra import kafka
from tests.conftest import start_broker


def test_new_cluster_ids_never_start_with_a_dash() -> None:
    ids = [kafka.new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids[:50])


@pytest.mark.integration
def test_a_cluster_id_with_a_leading_dash_still_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forcing the id is the only way to hit the 1-in-64 case on demand; the broker is real.
    dashed = "-" + base64.urlsafe_b64encode(bytes(16)).decode().rstrip("=")[1:]
    monkeypatch.setattr(kafka, "new_cluster_id", lambda: dashed)
    broker = start_broker(tmp_path)
    try:
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=15) is not None
        assert f"cluster.id={dashed}" in (broker.data_dir / "meta.properties").read_text()
    finally:
        broker.stop()
