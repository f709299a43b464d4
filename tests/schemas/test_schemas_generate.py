"""schemas/events.py is generated from the avsc files and stays in step with them."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC

import pytest

from schemas import events, generate


def test_events_py_is_up_to_date() -> None:
    assert generate.EVENTS_PY.read_text(encoding="utf-8") == generate.render(), (
        "schemas/events.py is stale: run python -m schemas.generate"
    )


def test_check_mode_passes_on_a_fresh_tree() -> None:
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(generate.load_schemas()))
def test_dataclass_fields_follow_the_avsc_order(name: str) -> None:
    schema = json.loads((generate.AVSC_DIR / f"{name}.avsc").read_text())
    cls = events.EVENT_CLASSES[name]
    assert [f.name for f in dataclasses.fields(cls)] == [f["name"] for f in schema["fields"]]
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    common = ["event_id", "event_type", "request_id", "session_id", "occurred_at", "producer"]
    assert [f.name for f in dataclasses.fields(cls)][:6] == common


def test_event_union_and_table_cover_every_schema() -> None:
    assert set(events.EVENT_CLASSES) == set(generate.load_schemas())
    assert set(events.Event.__args__) == set(events.EVENT_CLASSES.values())


def test_nested_record_mismatch_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("ResultPage", "QueryFailed"):
        (tmp_path / f"{name}.avsc").write_text((generate.AVSC_DIR / f"{name}.avsc").read_text())
    text = (tmp_path / "QueryFailed.avsc").read_text().replace("querytrail version of", "version of")
    (tmp_path / "QueryFailed.avsc").write_text(text)
    with pytest.raises(ValueError, match="Producer differs"):
        generate.render(tmp_path)


def test_new_event_id_is_a_monotonic_uuid7() -> None:
    ids = [events.new_event_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for text in ids[:50]:
        u = uuid.UUID(text)
        assert u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == text
    ms = uuid.UUID(ids[0]).int >> 80
    assert abs(ms - events.utcnow().timestamp() * 1000) < 5000


def test_helpers() -> None:
    now = events.utcnow()
    assert now.tzinfo is UTC
    p = events.producer("cli")
    assert p.component == "cli" and p.version
    e = events.ResultPage(
        event_id=events.new_event_id(),
        request_id="r1",
        occurred_at=now,
        producer=p,
        page=0,
        rows_json="[]",
        row_offset=0,
        last=True,
    )
    assert e.event_type == "ResultPage" and e.session_id is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.page = 1  # type: ignore[misc]
