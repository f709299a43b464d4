"""Session fixtures: a real Kafka broker and a real seeded fakesnow server, started once.

- ``kafka_bootstrap``: a broker from the Maven jars on free ports in a temp home (or the
  servers named by ``KAFKA_BOOTSTRAP_SERVERS``, and then nothing is started).
- ``fakesnow_profile``: a SnowflakeProfile pointing at a seeded fakesnow server.
- ``topic_prefix``: a unique prefix per test with every querytrail topic created.
- ``qt_settings``: a factory of Settings pointed at all of the above.

Services start lazily (only when a test asks for them) and are stopped at the end of the session;
an atexit hook stops them too if the session is interrupted, so no process is left behind.
The Kafka jars are cached across sessions in ``QUERYTRAIL_JAR_CACHE`` (default
``~/.querytrail/cache``), so only the first session on a machine downloads them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from querytrail.settings import KafkaSettings, Settings, SnowflakeProfile

# The ``keycloak`` session fixture (a real Keycloak, started only when a test asks for it).
pytest_plugins = ["tests.keycloak_fixture"]

_TEST_HOME = tempfile.mkdtemp(prefix="qt-test-home-")


def pytest_configure(config: pytest.Config) -> None:
    # Tests never see the developer's ~/.querytrail: a running `querytrail up` stack's
    # stack.yaml (or a QUERYTRAIL_CONFIG) would otherwise leak into every Settings().
    os.environ["QUERYTRAIL_HOME"] = _TEST_HOME
    os.environ.pop("QUERYTRAIL_CONFIG", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_TEST_HOME, ignore_errors=True)


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jar_cache() -> Path:
    return Path(os.environ.get("QUERYTRAIL_JAR_CACHE", str(Path.home() / ".querytrail" / "cache")))


def start_broker(home: Path, heap: str = "-Xms128m -Xmx512m") -> Any:
    """A started ``KafkaBroker`` on free ports under ``home``, owned by this test process.

    A free port can be taken by another process between choosing it and the broker binding it;
    the broker then exits at once (BrokerDiedError, "Address already in use"): retry on new ports.
    """
    from infra.kafka import BrokerDiedError, KafkaBroker, PortInUseError

    for attempt in range(3):
        broker = KafkaBroker(
            home / f"broker{attempt}",
            free_port(),
            free_port(),
            jar_cache=jar_cache(),
            heap=heap,
            owned_by_caller=True,
        )
        try:
            broker.start(timeout=120)
            return broker
        except (PortInUseError, BrokerDiedError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def qt_session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The querytrail home of this test session's services."""
    return tmp_path_factory.mktemp("qt-services")


@pytest.fixture(scope="session")
def kafka_bootstrap(qt_session_home: Path) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = start_broker(qt_session_home, heap="-Xms128m -Xmx768m")
    atexit.register(broker.stop)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def fakesnow_server(qt_session_home: Path) -> Iterator[Any]:
    """The running, seeded ``infra.fakesnow_server.FakesnowServer``."""
    from infra.fakesnow_server import FakesnowServer, connect_kwargs
    from infra.kafka import BrokerDiedError, PortInUseError
    from infra.seed import seed

    for attempt in range(3):
        server = FakesnowServer(qt_session_home / f"fakesnow{attempt}", free_port(), owned_by_caller=True)
        try:
            server.start(timeout=60)
            break
        except (PortInUseError, BrokerDiedError):
            if attempt == 2:
                raise
    atexit.register(server.stop)
    try:
        seed(connect_kwargs(server.port))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fakesnow_profile(fakesnow_server: Any) -> SnowflakeProfile:
    from infra.fakesnow_server import ACCOUNT, PASSWORD, USER

    return SnowflakeProfile(
        account=ACCOUNT,
        user=USER,
        password=PASSWORD,
        host="127.0.0.1",
        port=fakesnow_server.port,
        protocol="http",
        database="ANALYTICS",
        schema="PUBLIC",
        login_timeout_s=10,
        network_timeout_s=30,
    )


@pytest.fixture
def topic_prefix(kafka_bootstrap: str) -> Iterator[str]:
    """A unique topic prefix with every querytrail topic created (deleted after the test)."""
    from infra.topics import create_topics

    prefix = f"qt{uuid.uuid4().hex[:8]}"
    names = create_topics(kafka_bootstrap, prefix)
    yield prefix
    with contextlib.suppress(Exception):  # best effort: keeps a long session's broker small
        from confluent_kafka.admin import AdminClient

        futures = AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(list(names.values()))
        for fut in futures.values():
            fut.result(10)


@pytest.fixture
def qt_settings(
    kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile, topic_prefix: str, tmp_path: Path
) -> Callable[..., Settings]:
    """``qt_settings(**overrides) -> Settings`` for this test's broker, topics, fakesnow and home.

    A dict given for a sub-model (``kafka={"partitions": 1}``) updates that sub-model's fields.
    """

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "home": tmp_path / "qt-home",
            "environment": "local",
            "kafka": KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
            "snowflake_profiles": {"analytics": fakesnow_profile},
            "default_target": "analytics",
        }
        defaults = Settings(**base)
        for key, value in overrides.items():
            current = getattr(defaults, key, None)
            if isinstance(value, dict) and hasattr(current, "model_copy"):
                value = current.model_copy(update=value)
            base[key] = value
        return Settings(**base)

    return make
