"""A local single-node Trino with the Iceberg connector on querytrail's audit catalog, no Docker.

Trino comes from Maven Central through ``infra/trino/pom.xml`` (``mvn dependency:copy``, so a
user's Maven mirror or repository applies), unpacked once per version into the jar cache:
``trino-server-core`` plus the Iceberg plugin and the SQLite JDBC driver. It runs on Java 24 or
newer (the machine's Temurin 25) with the catalog of ``infra/trino/etc/catalog/iceberg.properties``
on the same pyiceberg SQL catalog (SQLite file and ``file://`` warehouse) that the sink, DuckDB and
Spark use. Queries go over Trino's HTTP protocol (``POST /v1/statement``), so no client package.

    python -m infra.trino [--home DIR] [--port N] [REPORT ...]   # run the reports, print them
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from infra.kafka import (
    JVM_DIR,
    KafkaInfraError,
    ToolMissingError,
    _file_lock,
    _java_major,
    die_with_parent,
    ensure_port_free,
    stop_process,
    tail,
)

__all__ = [
    "MIN_JAVA",
    "TRINO_VERSION",
    "TrinoError",
    "TrinoQueryError",
    "TrinoServer",
    "find_trino_java",
    "resolve_trino",
]

log = logging.getLogger(__name__)

TRINO_VERSION = "476"  # keep equal to trino.version in infra/trino/pom.xml
MIN_JAVA = 24  # Trino 476's floor
POM = Path(__file__).with_name("trino") / "pom.xml"
ETC = Path(__file__).with_name("trino") / "etc"


class TrinoError(KafkaInfraError):
    """Trino could not be resolved, started or reached; the message says why."""


class TrinoQueryError(TrinoError):
    """Trino answered a query with an error (its message, type and code are in the text)."""


def find_trino_java(java_home: Path | None = None) -> Path:
    """A ``java`` of version MIN_JAVA or newer: ``java_home``, $TRINO_JAVA_HOME, /usr/lib/jvm, PATH."""
    candidates: list[Path] = []
    for home in (java_home, os.environ.get("TRINO_JAVA_HOME"), os.environ.get("JAVA_HOME")):
        if home:
            candidates.append(Path(home) / "bin" / "java")
    if JVM_DIR.is_dir():  # newest first: the distributions' directory names carry the version
        candidates += [d / "bin" / "java" for d in sorted(JVM_DIR.iterdir(), reverse=True)]
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.is_file() and os.access(java, os.X_OK) and _java_major(java) >= MIN_JAVA:
            return java
    raise ToolMissingError(
        f"Trino {TRINO_VERSION} needs Java {MIN_JAVA} or newer and none was found (looked at "
        "$TRINO_JAVA_HOME, $JAVA_HOME, /usr/lib/jvm, PATH). Install e.g. Temurin 25 and set TRINO_JAVA_HOME."
    )


def resolve_trino(version: str, cache_dir: Path, timeout: float = 900.0) -> Path:
    """The unpacked Trino server of ``version`` with the Iceberg plugin, downloading it once.

    Like ``resolve_kafka_jars``: a file lock serialises concurrent callers and the directory only
    appears, with a ``.complete`` marker, once everything is in place.
    """
    server = cache_dir / f"trino-{version}"
    if (server / ".complete").exists():
        return server
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolMissingError(
            f"Maven (`mvn`) is needed once to download Trino {version} from Maven Central into "
            f"{server}, and it is not on PATH. Install it, e.g. `apt-get install maven`."
        )
    with _file_lock(cache_dir / f".trino-{version}.lock"):
        if (server / ".complete").exists():
            return server
        staging = cache_dir / f".trino-{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        downloads = staging / "downloads"
        log.info("downloading Trino %s into %s (once)", version, server)
        cmd = [
            mvn, "-B", "-q", "-f", str(POM), "dependency:copy",
            f"-Dtrino.version={version}", f"-DoutputDirectory={downloads}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        core = downloads / f"trino-server-core-{version}.tar.gz"
        plugin = downloads / f"trino-iceberg-{version}.zip"
        drivers = list(downloads.glob("sqlite-jdbc-*.jar")) if downloads.exists() else []
        if proc.returncode != 0 or not (core.exists() and plugin.exists() and drivers):
            out = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise TrinoError(f"mvn could not resolve Trino {version} (exit {proc.returncode}):\n{out}")
        _unpack(core, plugin, drivers[0], staging / "server", version)
        shutil.rmtree(downloads)
        (staging / "server" / ".complete").write_text(version + "\n", encoding="utf-8")
        shutil.rmtree(server, ignore_errors=True)
        (staging / "server").rename(server)
        shutil.rmtree(staging, ignore_errors=True)
    return server


def _unpack(core: Path, plugin: Path, driver: Path, dest: Path, version: str) -> None:
    with tarfile.open(core) as tar:  # the "data" filter refuses links or paths leaving dest
        tar.extractall(dest.parent, filter="data")
    (dest.parent / f"trino-server-core-{version}").rename(dest)
    with zipfile.ZipFile(plugin) as zf:
        for name in zf.namelist():  # every entry must stay inside the plugin directory
            if name.startswith("/") or ".." in Path(name).parts:
                raise TrinoError(f"unsafe path {name!r} in {plugin.name}")
        zf.extractall(dest / "plugin")  # noqa: S202 (every name was checked above)
    (dest / "plugin" / f"trino-iceberg-{version}").rename(dest / "plugin" / "iceberg")
    shutil.copy2(driver, dest / "plugin" / "iceberg" / driver.name)
    for launcher in (dest / "bin").rglob("launcher"):
        launcher.chmod(0o755)


class TrinoServer:
    """One Trino coordinator (also the worker) on 127.0.0.1, reading ``home``'s audit catalog.

    ``home`` is the querytrail home (its ``iceberg/catalog.db`` and ``iceberg/warehouse``);
    ``workdir`` holds Trino's etc, data and log.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        workdir: Path,
        *,
        version: str = TRINO_VERSION,
        catalog_name: str = "querytrail",
        jar_cache: Path | None = None,
        java_home: Path | None = None,
        heap: str = "1G",
        owned_by_caller: bool = False,
    ) -> None:
        self.home = Path(home)
        self.port = port
        self.workdir = Path(workdir)
        self.version = version
        self.catalog_name = catalog_name
        self.jar_cache = Path(jar_cache) if jar_cache else Path.home() / ".querytrail" / "cache"
        self.java_home = java_home
        self.heap = heap
        self.owned_by_caller = owned_by_caller  # True: Trino dies with this process
        self.log_path = self.workdir / "trino.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_etc(self) -> Path:
        etc = self.workdir / "etc"
        (etc / "catalog").mkdir(parents=True, exist_ok=True)
        subs = {
            "@HOME@": str(self.home.resolve()),
            "@PORT@": str(self.port),
            "@DATA@": str(self.workdir / "data"),
            "@CATALOG@": self.catalog_name,
            "@HEAP@": self.heap,
        }
        for name in ("config.properties", "jvm.config", "node.properties", "catalog/iceberg.properties"):
            text = (ETC / name).read_text(encoding="utf-8")
            for key, value in subs.items():
                text = text.replace(key, value)
            (etc / name).write_text(text, encoding="utf-8")
        return etc

    def start(self, timeout: float = 180.0) -> None:
        """Resolve Trino (once), start it and wait until it answers a query on the catalog."""
        if self._proc and self._proc.poll() is None:
            return
        if not (self.home / "iceberg" / "catalog.db").exists():
            raise TrinoError(
                f"no audit catalog at {self.home / 'iceberg' / 'catalog.db'} (run the sink first)"
            )
        java = find_trino_java(self.java_home)
        ensure_port_free(self.port, what="Trino")
        server = resolve_trino(self.version, self.jar_cache)
        self.workdir.mkdir(parents=True, exist_ok=True)
        etc = self._write_etc()
        env = {
            **os.environ,
            "JAVA_HOME": str(java.parent.parent),
            "PATH": f"{java.parent}:{os.environ['PATH']}",
        }
        cmd = [
            str(server / "bin" / "launcher"),
            "run",
            f"--etc-dir={etc}",
            f"--data-dir={self.workdir / 'data'}",
        ]
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # our own process group: stop() kills the whole tree
                preexec_fn=die_with_parent if self.owned_by_caller else None,
            )  # fmt: skip
        log.info(
            "Trino %s starting on %s (pid %d, log %s)", self.version, self.url, self._proc.pid, self.log_path
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise TrinoError(
                    f"Trino {self.url} exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(OSError, ValueError, TrinoQueryError):
                with urllib.request.urlopen(f"{self.url}/v1/info", timeout=2) as resp:  # noqa: S310 (our own loopback URL)
                    starting = json.load(resp).get("starting", True)
                if not starting:
                    self.query("SELECT 1", timeout=30)  # the node takes work, not just HTTP
                    return
            if time.monotonic() > deadline:
                raise TrinoError(
                    f"Trino {self.url} did not answer within {timeout:.0f}s; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.5)

    def query(self, sql: str, *, timeout: float = 120.0) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of ``sql``, values typed like DuckDB's (datetimes, lists, ...)."""
        names: list[str] = []
        types: list[str] = []
        rows: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + timeout
        headers = {"X-Trino-User": "querytrail", "X-Trino-Time-Zone": "UTC", "Content-Type": "text/plain"}
        req = urllib.request.Request(  # noqa: S310 (our own loopback URL)
            f"{self.url}/v1/statement", data=sql.encode("utf-8"), headers=headers, method="POST"
        )
        while True:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (our own loopback URL)
                page = json.load(resp)
            error = page.get("error")
            if error:
                raise TrinoQueryError(
                    f"Trino: {error.get('errorName', '?')} ({error.get('errorType', '?')}): {error.get('message', '')}"
                )
            if not names and page.get("columns"):
                names = [c["name"] for c in page["columns"]]
                types = [c["type"] for c in page["columns"]]
            rows += [tuple(_value(v, t) for v, t in zip(r, types, strict=True)) for r in page.get("data", [])]
            next_uri = page.get("nextUri")
            if not next_uri:
                return names, rows
            if not str(next_uri).startswith(self.url + "/"):  # follow our server only, never file:
                raise TrinoQueryError(f"Trino answered with a nextUri off {self.url}: {next_uri!r:.200}")
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(  # noqa: S310 (our own loopback URL)
                        urllib.request.Request(next_uri, headers=headers, method="DELETE"),  # noqa: S310
                        timeout=5,
                    ).close()
                raise TrinoQueryError(f"Trino query did not finish within {timeout:.0f}s")
            req = urllib.request.Request(next_uri, headers=headers)  # noqa: S310 (checked above)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self._proc is None:
            return
        stop_process(self._proc.pid, timeout=timeout, name=f"Trino {self.url}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._proc = None


def _value(value: Any, typ: str) -> Any:
    """A value of Trino's JSON protocol as the Python type DuckDB and pyarrow give for it."""
    if value is None:
        return None
    if typ.startswith("array(") and isinstance(value, list):
        return [_value(v, typ[len("array(") : -1]) for v in value]
    if typ.startswith("timestamp") and isinstance(value, str):
        return _timestamp(value, with_zone=typ.endswith("with time zone"))
    if typ == "date" and isinstance(value, str):
        return date.fromisoformat(value)
    if typ.startswith("decimal") and isinstance(value, str):
        return Decimal(value)
    if typ in ("double", "real") and isinstance(value, str):
        return float(value)  # NaN, Infinity
    return value


def _timestamp(text: str, *, with_zone: bool) -> datetime:
    if not with_zone:
        return datetime.fromisoformat(text)
    stamp, zone = text.rsplit(" ", 1)
    naive = datetime.fromisoformat(stamp)
    if zone == "UTC":
        return naive.replace(tzinfo=UTC)
    if zone[:1] in "+-":
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = zone[1:].split(":")
        return naive.replace(tzinfo=timezone(sign * timedelta(hours=int(hours), minutes=int(minutes))))
    return naive.replace(tzinfo=ZoneInfo(zone))


@contextlib.contextmanager
def running(home: Path, port: int, workdir: Path, **kwargs: Any) -> Iterator[TrinoServer]:
    """A started TrinoServer, stopped on exit."""
    server = TrinoServer(home, port, workdir, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Start Trino on the local audit catalog, print each report, stop it."""
    import tempfile

    from sinks.reports import REPORTS, format_result, render_sql, report_sql

    parser = argparse.ArgumentParser(prog="python -m infra.trino", description=main.__doc__)
    parser.add_argument("reports", nargs="*", metavar="REPORT", help=f"default: all of {', '.join(REPORTS)}")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("QUERYTRAIL_HOME", Path.home() / ".querytrail"))
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("TRINO_PORT", "18085")))
    args = parser.parse_args(argv)
    unknown = [r for r in args.reports if r not in REPORTS]
    if unknown:
        parser.error(f"unknown report {unknown[0]!r}; one of {', '.join(REPORTS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = Path(os.environ.get("QUERYTRAIL_JAR_CACHE", args.home / "cache"))
    with tempfile.TemporaryDirectory(prefix="querytrail-trino-") as work:
        try:
            with running(args.home, args.port, Path(work), jar_cache=cache) as trino:
                for name in args.reports or REPORTS:
                    names, rows = trino.query(render_sql(report_sql(name, "trino"), "trino"))
                    print(f"== {name}\n{format_result(names, rows)}")
        except KafkaInfraError as exc:
            print(f"error: {exc}")
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
