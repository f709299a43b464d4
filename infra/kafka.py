"""A real single-node Apache Kafka 4.x broker (KRaft, broker+controller), no Docker.

The jars come from Maven Central through ``infra/pom.xml`` (``mvn dependency:copy-dependencies``)
into a cache under the querytrail home, once per version; the broker then runs on the machine's
Java 17 with its storage, config and log under ``home/kafka``.

Version pin (KAFKA_VERSION): 4.4.0, the newest 4.x on Maven Central when this was written,
checked against the Python clients we ship (tests/infra): aiokafka 0.14 (faust-streaming 0.15.3's
client) produces idempotently and transactionally, joins a group and commits; faust's producer
and confluent-kafka 2.16 (idempotent, acks=all) produce and consume every event type; all put
a key in the same murmur2 partition. Kafka 4.0
removed the pre-2.1 protocol versions (KIP-896), and aiokafka before 0.13 bootstrapped with a
fixed old Metadata version the 4.x broker answers by closing the connection (aio-libs/aiokafka
#1085); 0.13 moved to negotiating versions from ApiVersions (its ``api_version`` argument was
deprecated then), so aiokafka >= 0.13 is required, not an older broker. Bump only after
tests/infra passes on the new version.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "BrokerDiedError",
    "KafkaBroker",
    "KafkaInfraError",
    "PortInUseError",
    "ToolMissingError",
    "die_with_parent",
    "ensure_port_free",
    "find_java",
    "new_cluster_id",
    "resolve_kafka_jars",
    "stop_process",
    "tail",
]

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).with_name("pom.xml")
JVM_DIR = Path("/usr/lib/jvm")  # where Debian/Ubuntu install JDKs


class KafkaInfraError(RuntimeError):
    """Base of every error starting the local infrastructure."""


class ToolMissingError(KafkaInfraError):
    """Java or Maven is not installed (or too old)."""


class PortInUseError(KafkaInfraError):
    """A port the broker needs is already bound by another process."""


class BrokerDiedError(KafkaInfraError):
    """The broker process exited or never answered; the message holds its log tail."""


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (Linux).

    For services owned by a test session: even a SIGKILLed pytest leaves no broker behind.
    `querytrail up` does not use it (its services outlive the command by design).
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _java_major(java: Path) -> int:
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
    # e.g. 'openjdk version "17.0.15" 2025-04-15'
    for token in (out.stderr + out.stdout).split():
        token = token.strip('"')
        if token[:1].isdigit():
            head = token.split(".")[0].split("-")[0].split("+")[0]
            if head.isdigit():
                return int(head)
    return 0


def find_java(java_home: Path | None = None) -> Path:
    """The ``java`` binary to run the broker: settings, $JAVA_HOME, /usr/lib/jvm (17 first), PATH."""
    candidates: list[Path] = []
    for home in (java_home, os.environ.get("JAVA_HOME")):
        if home:
            candidates.append(Path(home) / "bin" / "java")
    if JVM_DIR.is_dir():
        dirs = sorted(JVM_DIR.iterdir())
        candidates += [d / "bin" / "java" for d in dirs if "17" in d.name]
        candidates += [d / "bin" / "java" for d in dirs if "17" not in d.name]
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.is_file() and os.access(java, os.X_OK) and _java_major(java) >= 17:
            return java
    raise ToolMissingError(
        "Java 17 or newer is needed to run the Kafka broker and none was found "
        "(looked at settings.local.java_home, $JAVA_HOME, /usr/lib/jvm, PATH). "
        "Install it, e.g. `apt-get install openjdk-17-jre-headless`."
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_kafka_jars(version: str, cache_dir: Path, timeout: float = 600.0) -> Path:
    """The directory holding every jar of Kafka ``version``, downloading it once with Maven.

    Safe to call from several processes at once (a file lock serialises the download) and
    atomic (a half-finished download is never mistaken for a complete one).
    """
    lib = cache_dir / f"kafka-{version}"
    if (lib / ".complete").exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolMissingError(
            f"Maven (`mvn`) is needed once to download Apache Kafka {version} from Maven Central "
            f"into {lib}, and it is not on PATH. Install it, e.g. `apt-get install maven`."
        )
    with _file_lock(cache_dir / f".kafka-{version}.lock"):
        if (lib / ".complete").exists():
            return lib
        staging = cache_dir / f".kafka-{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("downloading Apache Kafka %s jars into %s (once)", version, lib)
        cmd = [
            mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
            f"-Dkafka.version={version}", f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        jars = list(staging.glob("kafka_2.13-*.jar")) if staging.exists() else []
        if proc.returncode != 0 or not jars:
            out = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise KafkaInfraError(
                f"mvn could not resolve Apache Kafka {version} (exit {proc.returncode}):\n{out}"
            )
        (staging / ".complete").write_text(version + "\n", encoding="utf-8")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
    return lib


def ensure_port_free(port: int, host: str = "127.0.0.1", what: str = "service") -> None:
    """Raise PortInUseError when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"{what} port {host}:{port} is already in use ({exc.strerror}); "
                f"stop what holds it (`ss -ltnp 'sport = :{port}'`) or choose another port"
            ) from exc


def stop_process(pid: int, timeout: float = 20.0, name: str = "process") -> None:
    """SIGTERM ``pid``'s process group, wait, then SIGKILL; returns once it is gone."""

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # reap our own child so it does not linger as a zombie
            done, _ = os.waitpid(pid, os.WNOHANG)
            return done == 0
        except ChildProcessError:
            return _not_zombie(pid)

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                os.killpg(pid, sig)  # the service was started in its own session
            except ProcessLookupError:
                os.kill(pid, sig)

    if not alive():
        return
    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) did not stop within %.0fs of SIGTERM; killing it", name, pid, timeout)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
# every config dump is hundreds of lines; keep the log readable
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka's own ``Uuid.randomUuid()`` makes it: base64url of 16 random
    bytes, never starting with '-' (the storage tool's argument parser would read it as a flag;
    this once failed a CI run, about one start in 64)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker:
    """One KRaft broker+controller on 127.0.0.1, storage under ``home/kafka``."""

    def __init__(
        self,
        home: Path,
        port: int,
        controller_port: int,
        version: str = KAFKA_VERSION,
        *,
        heap: str = "-Xms256m -Xmx1g",
        java_home: Path | None = None,
        jar_cache: Path | None = None,
        partitions: int = 3,
        owned_by_caller: bool = False,
    ) -> None:
        self.home = Path(home)
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.heap = heap
        self.java_home = java_home
        self.jar_cache = Path(jar_cache) if jar_cache else self.home / "cache"
        self.partitions = partitions
        self.owned_by_caller = owned_by_caller  # True: the broker dies with this process
        self.dir = self.home / "kafka"
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _properties(self) -> str:
        p, c = self.port, self.controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{c}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every internal topic has one replica, and an ISR of one is all there is.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "num.partitions": str(self.partitions),
            # An audit log: topics exist only as declared (schemas/topics.py), and a replica that
            # lost data never becomes leader.
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "log.retention.hours": str(30 * 24),
            "group.initial.rebalance.delay.ms": "0",
            "delete.topic.enable": "true",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, java: Path, lib: Path, *args: str, jvm: tuple[str, ...] = ()) -> list[str]:
        return [
            str(java), *jvm,
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp", f"{lib}/*", *args,
        ]  # fmt: skip

    def start(self, timeout: float = 90.0) -> None:
        """Format storage on first use, start the broker and wait until it answers."""
        if self._proc and self._proc.poll() is None:
            return
        java = find_java(self.java_home)
        ensure_port_free(self.port, what="Kafka broker")
        ensure_port_free(self.controller_port, what="Kafka controller")
        lib = resolve_kafka_jars(self.version, self.jar_cache)
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "server.properties"
        config.write_text(self._properties(), encoding="utf-8")
        (self.dir / "log4j2.properties").write_text(_LOG4J2, encoding="utf-8")
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = new_cluster_id()
            fmt = subprocess.run(
                self._java(java, lib, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)),
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if fmt.returncode != 0:
                out = "\n".join((fmt.stdout + fmt.stderr).splitlines()[-20:])
                raise KafkaInfraError(f"formatting KRaft storage in {self.data_dir} failed:\n{out}")
        jvm = (*self.heap.split(), "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                self._java(java, lib, "kafka.Kafka", str(config), jvm=jvm),
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # our own process group: stop() kills the whole tree
                preexec_fn=die_with_parent if self.owned_by_caller else None,
            )  # fmt: skip
        log.info(
            "Kafka %s starting on %s (pid %d, log %s)",
            self.version,
            self.bootstrap,
            self._proc.pid,
            self.log_path,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        # log_level 0: "connection refused" until the broker listens is expected, not news
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.connection.setup.timeout.ms": 2000, "log_level": 0}
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise BrokerDiedError(
                    f"Kafka broker {self.bootstrap} exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(Exception):
                md = admin.list_topics(timeout=2)
                if md.brokers:
                    return
            if time.monotonic() > deadline:
                raise BrokerDiedError(
                    f"Kafka broker {self.bootstrap} did not answer within {timeout:.0f}s; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.3)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the broker at once (fault-injection tests)."""
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean controlled shutdown), then SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        stop_process(self._proc.pid, timeout=timeout, name=f"Kafka broker {self.bootstrap}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._proc = None
