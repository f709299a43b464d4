"""fakesnow's HTTP server (the Snowflake emulator) as a subprocess with persistent storage.

The real snowflake-connector-python talks to it over http on 127.0.0.1.

Why not plain ``fakesnow -s -d DBPATH``: in fakesnow 0.12.1 ``-d`` only reaches the in-process
patch mode; the server keeps one *in-memory* DuckDB shared by every session, and persists only
for clients that send the ``FAKESNOW_DB_PATH`` session parameter, each such login opening its
own private instance. So ``python -m infra.fakesnow_server`` runs the very same server app
(``fakesnow.server.app`` under uvicorn) with its shared instance pointed at ``DBPATH``, and
re-attaches every database file found there on start (fakesnow attaches a database only when a
session names it at login, so ``SELECT ... FROM ANALYTICS.PUBLIC.X`` from a session without a
database would otherwise fail after a restart).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.kafka import BrokerDiedError, die_with_parent, ensure_port_free, stop_process, tail

__all__ = ["ADMIN_USER", "NOP_REGEXES", "FakesnowServer", "connect_kwargs", "main"]

log = logging.getLogger(__name__)

USER = "querytrail"
# Who seeds the demo tables and probes readiness: an administrator, not querytrail's service user,
# so `querytrail reconcile` on a fresh stack does not report the setup as statements run with
# querytrail's credentials outside querytrail (docs/warehouse.md).
ADMIN_USER = "fakesnow_admin"
PASSWORD = "fakesnow-local"  # noqa: S105 -- the emulator accepts any password; local only
ACCOUNT = "fakesnow"

# Statements fakesnow 0.12.1 rejects as "not implemented" but that a Snowflake session issues
# as a matter of course; the emulator accepts them and does nothing to DuckDB. QUERY_TAG, USE ROLE
# and USE WAREHOUSE are kept as session state by infra.fakesnow_history, which records them in the
# emulator's QUERY_HISTORY as an account does; a statement timeout is not enforced.
NOP_REGEXES: tuple[str, ...] = (
    r"\s*ALTER\s+SESSION\s+(UN)?SET\s+(QUERY_TAG|STATEMENT_TIMEOUT_IN_SECONDS)\b",
    r"\s*USE\s+(ROLE|WAREHOUSE|SECONDARY\s+ROLES)\b",
)


def connect_kwargs(port: int, host: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``snowflake.connector.connect`` against a local fakesnow server."""
    kwargs: dict[str, Any] = {
        "account": ACCOUNT,
        "user": USER,
        "password": PASSWORD,
        "host": host,
        "port": port,
        "protocol": "http",
        # the emulator has no telemetry endpoint worth calling
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        "login_timeout": 10,
        "network_timeout": 30,
    }
    kwargs.update(extra)
    return kwargs


class FakesnowServer:
    """``python -m infra.fakesnow_server`` on 127.0.0.1:``port``, databases under ``home/fakesnow``."""

    def __init__(self, home: Path, port: int, owned_by_caller: bool = False) -> None:
        self.home = Path(home)
        self.owned_by_caller = owned_by_caller  # True: the server dies with this process
        self.port = port
        self.dir = self.home / "fakesnow"
        self.db_path = self.dir / "db"
        self.log_path = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until the real connector can log in and query."""
        if self._proc and self._proc.poll() is None:
            return
        ensure_port_free(self.port, what="fakesnow")
        self.db_path.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "infra.fakesnow_server",
            "--host", "127.0.0.1", "--port", str(self.port), "--db-path", str(self.db_path),
        ]  # fmt: skip
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent if self.owned_by_caller else None,
            )
        log.info("fakesnow starting on %s (pid %d, log %s)", self.url, self._proc.pid, self.log_path)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        import snowflake.connector

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise BrokerDiedError(
                    f"fakesnow {self.url} exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                probe = connect_kwargs(self.port, login_timeout=3, user=ADMIN_USER)
                with snowflake.connector.connect(**probe) as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchall()
                return
            except Exception as exc:  # not listening yet: any connector error means "retry"
                last = exc
            if time.monotonic() > deadline:
                raise BrokerDiedError(
                    f"fakesnow {self.url} did not answer within {timeout:.0f}s ({last}); "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.3)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self._proc is None:
            return
        stop_process(self._proc.pid, timeout=timeout, name=f"fakesnow {self.url}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._proc = None


def _serve(host: str, port: int, db_path: Path) -> int:
    import importlib

    import uvicorn
    from fakesnow import info_schema
    from fakesnow.instance import FakeSnow

    from infra import fakesnow_history

    # ``fakesnow.server`` is also the name of a function in fakesnow/__init__: import the module.
    fs_server: Any = importlib.import_module("fakesnow.server")

    db_path.mkdir(parents=True, exist_ok=True)
    fakesnow_history.patch_tables_view(info_schema)  # INFORMATION_SCHEMA.TABLES.BYTES, see there
    shared = FakeSnow(db_path=db_path, nop_regexes=list(NOP_REGEXES))
    for db_file in sorted(db_path.glob("*.db")):
        shared.connect(database=db_file.stem).close()  # attaches the file under its database name
        fakesnow_history.replace_tables_view(shared.duck_conn, info_schema, db_file.stem)
    fs_server.shared_fs = shared
    fakesnow_history.install(fs_server, shared, user=USER)  # QUERY_HISTORY, QUERY_TAG, roles
    server = uvicorn.Server(uvicorn.Config(fs_server.app, host=host, port=port, log_level="warning"))
    try:
        server.run()  # returns on SIGTERM/SIGINT after a graceful shutdown
    finally:
        shared.duck_conn.close()  # checkpoint the DuckDB files
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fakesnow HTTP server with persistent storage")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-path", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return _serve(args.host, args.port, args.db_path)


if __name__ == "__main__":
    sys.exit(main())
