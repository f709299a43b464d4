"""A real Keycloak (the identity provider of the local stack), no Docker.

The distribution ``org.keycloak:keycloak-quarkus-dist:<version>:zip`` comes from Maven Central
through ``mvn dependency:copy`` into the jar cache (``QUERYTRAIL_JAR_CACHE`` or
``settings.local.jar_cache``, like the Kafka jars), is unpacked there once per version, and runs
``kc.sh start-dev`` on Java 21+ (Java 25 preferred) on 127.0.0.1, importing the realm
``infra/keycloak/querytrail-realm.json`` (realm ``querytrail``).

Each instance gets its own small home under ``workdir`` (its ``conf``, ``data`` and the
``lib/quarkus`` build output that ``start-dev`` may rebuild); the 160 MB of library jars and
the themes are symlinks into the shared, read-only cache. The first start's built ``lib/quarkus``
is kept in the cache, so later starts skip the rebuild (3+ min on a loaded machine -> ~1 min). So two instances (a test
session and ``querytrail up``) never write into each other's files. ``start-dev`` keeps the
realm in an in-memory database: every start imports the realm afresh, nothing persists.

Version pin (KEYCLOAK_VERSION): 26.5.6, seen to start in dev mode on Java 25 here in ~15-25 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.kafka import (
    BrokerDiedError,
    KafkaInfraError,
    ToolMissingError,
    _file_lock,
    _java_major,
    die_with_parent,
    ensure_port_free,
    stop_process,
    tail,
)

if TYPE_CHECKING:
    from querytrail.settings import IssuerSettings

__all__ = [
    "KEYCLOAK_VERSION",
    "REALM",
    "REALM_FILE",
    "Keycloak",
    "KeycloakHandle",
    "default_jar_cache",
    "find_java21",
    "issuer_settings",
    "resolve_keycloak",
    "start_keycloak",
    "token_request",
]

log = logging.getLogger(__name__)

KEYCLOAK_VERSION = "26.5.6"
REALM = "querytrail"
REALM_FILE = Path(__file__).with_name("keycloak") / "querytrail-realm.json"
JVM_DIR = Path("/usr/lib/jvm")
_MIN_JAVA = 21  # Keycloak 26 needs Java 21 or newer


def default_jar_cache() -> Path:
    """``QUERYTRAIL_JAR_CACHE``, else ``~/.querytrail/cache`` (the tests' and CI's default)."""
    return Path(os.environ.get("QUERYTRAIL_JAR_CACHE", str(Path.home() / ".querytrail" / "cache")))


def find_java21(java_home: Path | None = None) -> Path:
    """A ``java`` of version 21 or newer: ``java_home``, $KEYCLOAK_JAVA_HOME, /usr/lib/jvm (newest first)."""
    candidates: list[Path] = []
    for home in (java_home, os.environ.get("KEYCLOAK_JAVA_HOME"), os.environ.get("JAVA_HOME")):
        if home:
            candidates.append(Path(home) / "bin" / "java")
    if JVM_DIR.is_dir():
        # temurin-25-jdk-amd64 before java-17-openjdk-amd64: the newest JDK first
        candidates += [d / "bin" / "java" for d in sorted(JVM_DIR.iterdir(), key=_jdk_rank, reverse=True)]
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.is_file() and os.access(java, os.X_OK) and _java_major(java) >= _MIN_JAVA:
            return java
    raise ToolMissingError(
        f"Keycloak needs Java {_MIN_JAVA} or newer and none was found (looked at $KEYCLOAK_JAVA_HOME, "
        "$JAVA_HOME, /usr/lib/jvm, PATH). Install one, e.g. `apt-get install openjdk-21-jre-headless`."
    )


def _jdk_rank(path: Path) -> int:
    digits = [int(p) for p in path.name.replace("_", "-").split("-") if p.isdigit()]
    return max(digits, default=0)


def resolve_keycloak(version: str, cache_dir: Path, timeout: float = 900.0) -> Path:
    """The unpacked Keycloak ``version`` distribution in the cache, downloading it once with Maven.

    Safe from several processes at once (a file lock) and atomic (a ``.complete`` marker is
    written last, a half-unpacked tree is never used).
    """
    dist = cache_dir / f"keycloak-{version}"
    if (dist / ".complete").exists():
        return dist
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolMissingError(
            f"Maven (`mvn`) is needed once to download Keycloak {version} from Maven Central "
            f"into {dist}, and it is not on PATH. Install it, e.g. `apt-get install maven`."
        )
    with _file_lock(cache_dir / f".keycloak-{version}.lock"):
        if (dist / ".complete").exists():
            return dist
        staging = cache_dir / f".keycloak-{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        log.info("downloading Keycloak %s from Maven Central into %s (once)", version, dist)
        cmd = [
            mvn, "-B", "-q", "dependency:copy",
            f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:zip", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        archive = staging / f"keycloak-quarkus-dist-{version}.zip"
        if proc.returncode != 0 or not archive.is_file():
            out = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise KafkaInfraError(
                f"mvn could not resolve Keycloak {version} (exit {proc.returncode}):\n{out}"
            )
        with zipfile.ZipFile(archive) as zf:
            _safe_extract(zf, staging)
        archive.unlink()
        unpacked = staging / f"keycloak-{version}"
        if not (unpacked / "bin" / "kc.sh").is_file():
            raise KafkaInfraError(f"the Keycloak {version} archive has no keycloak-{version}/bin/kc.sh")
        (unpacked / "bin" / "kc.sh").chmod(0o755)
        (unpacked / ".complete").write_text(version + "\n", encoding="utf-8")
        shutil.rmtree(dist, ignore_errors=True)
        unpacked.rename(dist)
        shutil.rmtree(staging, ignore_errors=True)
    return dist


def _safe_extract(zf: zipfile.ZipFile, dest: Path) -> None:
    """Extract ``zf`` under ``dest``, refusing any member that would land outside it."""
    root = dest.resolve()
    for member in zf.infolist():
        target = (dest / member.filename).resolve()
        if not target.is_relative_to(root):
            raise KafkaInfraError(f"refusing archive member outside the target: {member.filename!r}")
    zf.extractall(dest)


def _augmented(dist: Path) -> Path:
    """Where the cache keeps a ``lib/quarkus`` already built for our start-dev options."""
    return dist.parent / f".keycloak-{dist.name.removeprefix('keycloak-')}-dev-quarkus"


def _keep_augmented(dist: Path, home: Path) -> None:
    """Save this started instance's ``lib/quarkus`` for the next instance (once, atomically).

    ``start-dev`` on a fresh distribution first rebuilds ("augments") the Quarkus application:
    minutes on a loaded 2-core machine, and about half of a start even when idle. The result
    depends only on the build options, which are fixed in ``Keycloak.start``; Keycloak checks
    them itself and rebuilds if they differ, so a stale copy costs time, never correctness.
    """
    target = _augmented(dist)
    if (target / ".complete").exists():
        return
    with _file_lock(dist.parent / f"{target.name}.lock"):
        if (target / ".complete").exists():
            return
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(home / "lib" / "quarkus", staging)
        (staging / ".complete").write_text("built by start-dev\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


def _instance_home(dist: Path, home: Path) -> None:
    """``home``: this instance's writable Keycloak home, sharing the read-only jars of ``dist``."""
    shutil.rmtree(home, ignore_errors=True)
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    # kc.sh finds its home with `readlink -f $0`: a copy (not a link) makes that home this one
    shutil.copy2(dist / "bin" / "kc.sh", home / "bin" / "kc.sh")
    shutil.copytree(dist / "conf", home / "conf")
    built = _augmented(dist)
    quarkus = built if (built / ".complete").exists() else dist / "lib" / "quarkus"
    shutil.copytree(quarkus, home / "lib" / "quarkus", ignore=shutil.ignore_patterns(".complete"))
    shutil.copytree(dist / "lib" / "app", home / "lib" / "app")
    shutil.copy2(dist / "lib" / "quarkus-run.jar", home / "lib" / "quarkus-run.jar")
    (home / "lib" / "lib").symlink_to(dist / "lib" / "lib")
    for name in ("providers", "themes"):
        (home / name).symlink_to(dist / name)
    (home / "data" / "import").mkdir(parents=True)


@dataclass(frozen=True)
class KeycloakHandle:
    """A running Keycloak: where it answers, and how to stop it."""

    base_url: str
    pid: int
    log_path: Path
    _server: Keycloak

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{REALM}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def saml_metadata_url(self) -> str:
        return f"{self.issuer}/protocol/saml/descriptor"

    def stop(self) -> None:
        self._server.stop()


class Keycloak:
    """One ``kc.sh start-dev`` on 127.0.0.1:``port`` with the querytrail realm imported."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        version: str = KEYCLOAK_VERSION,
        *,
        realm_file: Path = REALM_FILE,
        jar_cache: Path | None = None,
        java_home: Path | None = None,
        heap: str = "-Xms64m -Xmx512m",
        owned_by_caller: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.version = version
        self.realm_file = realm_file
        self.jar_cache = Path(jar_cache) if jar_cache else default_jar_cache()
        self.java_home = java_home
        self.heap = heap
        self.owned_by_caller = owned_by_caller  # True: Keycloak dies with this process
        self.home = self.workdir / "keycloak"
        self.log_path = self.workdir / "keycloak.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{REALM}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 180.0) -> KeycloakHandle:
        """Start Keycloak and wait until the realm's discovery document answers."""
        if self._proc is not None and self._proc.poll() is None:
            return self._handle()
        java = find_java21(self.java_home)
        ensure_port_free(self.port, what="Keycloak")
        json.loads(self.realm_file.read_text(encoding="utf-8"))  # a broken realm file fails here, clearly
        dist = resolve_keycloak(self.version, self.jar_cache)
        _instance_home(dist, self.home)
        shutil.copy2(self.realm_file, self.home / "data" / "import" / self.realm_file.name)
        env = {
            **os.environ,
            "JAVA": str(java),
            "JAVA_OPTS_KC_HEAP": self.heap,
            # dev mode only: the master realm's admin, for poking at the local IdP by hand
            "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
            "KC_BOOTSTRAP_ADMIN_PASSWORD": "admin-pw",
        }
        env.pop("JAVA_OPTS", None)  # kc.sh's defaults, plus our heap
        cmd = [
            str(self.home / "bin" / "kc.sh"), "start-dev",
            "--http-host=127.0.0.1", f"--http-port={self.port}", "--import-realm",
            # health and metrics off: no management interface on port 9000 (a clash between instances)
            "--db=dev-mem", "--health-enabled=false", "--metrics-enabled=false",
        ]  # fmt: skip
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                cmd, env=env, cwd=self.home, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent if self.owned_by_caller else None,
            )  # fmt: skip
        log.info(
            "Keycloak %s starting on %s (pid %d, log %s)",
            self.version,
            self.base_url,
            self._proc.pid,
            self.log_path,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        try:
            _keep_augmented(dist, self.home)
        except OSError as exc:  # only a speed-up for the next start
            log.warning("could not keep Keycloak's built application in %s: %s", dist.parent, exc)
        return self._handle()

    def _handle(self) -> KeycloakHandle:
        assert self._proc is not None
        return KeycloakHandle(
            base_url=self.base_url, pid=self._proc.pid, log_path=self.log_path, _server=self
        )

    def _wait_ready(self, timeout: float) -> None:
        url = f"{self.issuer}/.well-known/openid-configuration"
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise BrokerDiedError(
                    f"Keycloak {self.base_url} exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 -- local http
                    if json.loads(resp.read()).get("issuer") == self.issuer:
                        return
            if time.monotonic() > deadline:
                raise BrokerDiedError(
                    f"Keycloak {self.base_url} did not serve {url} within {timeout:.0f}s; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.5)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM its process group (kc.sh and the JVM), then SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        stop_process(self._proc.pid, timeout=timeout, name=f"Keycloak {self.base_url}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._proc = None


def start_keycloak(
    port: int,
    workdir: Path,
    *,
    jar_cache: Path | None = None,
    owned_by_caller: bool = False,
    timeout: float = 180.0,
) -> KeycloakHandle:
    """Start Keycloak on 127.0.0.1:``port`` with its state under ``workdir``; the running handle."""
    return Keycloak(workdir, port, jar_cache=jar_cache, owned_by_caller=owned_by_caller).start(timeout)


def token_request(token_endpoint: str, form: dict[str, str], timeout: float = 10.0) -> dict[str, object]:
    """POST a form to a token endpoint; the JSON answer (raises urllib.error.HTTPError on 4xx/5xx)."""
    from urllib.parse import urlencode

    req = urllib.request.Request(  # noqa: S310 -- the local IdP
        token_endpoint,
        data=urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise urllib.error.URLError("token endpoint answered a non-object")
    return data


def issuer_settings(issuer: str) -> IssuerSettings:
    """How the ingress and worker trust the local Keycloak realm at ``issuer``.

    Subjects are ``preferred_username`` (``alice``, ``service-account-querytrail-ci``): readable
    in the audit log, unique in the realm, and not editable by users (``editUsernameAllowed``
    is off in the realm file). ``service_account: true`` is a hard-coded claim of the
    querytrail-ci client; the audience ``querytrail`` comes from an audience mapper.
    """
    from querytrail.settings import IssuerSettings

    return IssuerSettings(
        issuer=issuer,
        audience="querytrail",
        algorithms=["RS256"],
        subject_claim="preferred_username",
        required_claims=["sub", "exp", "iat", "preferred_username"],
        service_account_claim="service_account",
    )
