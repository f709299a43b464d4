"""infra/trino.py without a server: value conversion, Java and Maven errors, unpack safety.

The server itself is exercised by tests/sinks/test_engines.py (started once per session).
"""

from __future__ import annotations

import zipfile
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

import infra.trino
from infra.kafka import ToolMissingError
from infra.trino import TrinoError, _unpack, _value, resolve_trino


def test_protocol_values_become_the_types_duckdb_returns() -> None:
    ts = "timestamp(6) with time zone"
    assert _value("2026-11-20 02:00:00.000001 UTC", ts) == datetime(2026, 11, 20, 2, 0, 0, 1, tzinfo=UTC)
    assert _value("2026-11-20 02:00:00.000000 +01:00", ts) == datetime(
        2026, 11, 20, 2, tzinfo=timezone(timedelta(hours=1))
    )
    assert _value("2026-11-20 02:00:00.000000", "timestamp(6)") == datetime(2026, 11, 20, 2)
    assert _value("2026-11-20", "date") == date(2026, 11, 20)
    assert _value(["a", None], "array(varchar)") == ["a", None]
    assert _value([["2026-11-20 02:00:00.000 UTC"]], f"array(array({ts}))") == [
        [datetime(2026, 11, 20, 2, tzinfo=UTC)]
    ]
    assert _value("1.50", "decimal(10,2)") == Decimal("1.50")
    assert _value("NaN", "double") != _value("NaN", "double")  # a float NaN, not the text
    assert _value(None, ts) is None and _value(3, "bigint") == 3


def test_no_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infra.trino.shutil, "which", lambda _name: None)  # fault: mvn not installed
    with pytest.raises(ToolMissingError, match="Maven"):
        resolve_trino("476", tmp_path)
    assert not (tmp_path / "trino-476").exists()


def test_no_recent_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infra.trino, "JVM_DIR", tmp_path / "no-jvms")
    monkeypatch.setattr(infra.trino.shutil, "which", lambda _name: None)
    monkeypatch.delenv("TRINO_JAVA_HOME", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(ToolMissingError, match="Java 24"):
        infra.trino.find_trino_java()


def test_a_plugin_zip_that_escapes_its_directory_is_refused(tmp_path: Path) -> None:
    import tarfile

    core = tmp_path / "trino-server-core-1.tar.gz"
    (tmp_path / "trino-server-core-1" / "bin").mkdir(parents=True)
    with tarfile.open(core, "w:gz") as tar:
        tar.add(tmp_path / "trino-server-core-1", arcname="trino-server-core-1")
    plugin = tmp_path / "trino-iceberg-1.zip"
    with zipfile.ZipFile(plugin, "w") as zf:
        zf.writestr("trino-iceberg-1/../../../evil.jar", b"x")
    driver = tmp_path / "sqlite-jdbc-1.jar"
    driver.write_bytes(b"jar")
    with pytest.raises(TrinoError, match="unsafe path"):
        _unpack(core, plugin, driver, tmp_path / "out" / "server", "1")
    assert not list(tmp_path.rglob("evil.jar"))
