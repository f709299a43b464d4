"""infra/compose.yaml, checked without a Docker engine (none exists where CI runs).

The file is parsed, and what can be checked without running it is: the services are there,
the published ports are the settings' defaults, every querytrail container's environment
loads into Settings, the hosts it names are compose services, the init script imports what
exists, and the Dockerfile copies every package.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from querytrail.observability import SERVICE_PORT_OFFSETS
from querytrail.settings import IngressSettings, LocalStackSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose.yaml"
QT_SERVICES = ("ingress", "worker", "executor", "sink")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out[int(container)] = int(host)
    return out


def test_services_present(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "minio", "iceberg-rest", "trino", "fakesnow", "init", *QT_SERVICES):
        assert name in services, name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["iceberg-rest"]["image"].startswith("tabulario/iceberg-rest")
    assert services["trino"]["image"].startswith("trinodb/trino")
    assert services["minio"]["image"].startswith("minio/minio")
    for name in QT_SERVICES:
        assert services[name]["command"] == [name]
        assert services[name]["build"]["dockerfile"] == "infra/compose/Dockerfile"


def test_ports_match_the_settings(compose: dict[str, Any]) -> None:
    services, local, defaults = compose["services"], LocalStackSettings(), Settings()
    assert _published(services["kafka"])[9092] == local.kafka_port
    assert _published(services["fakesnow"])[18080] == local.fakesnow_port
    assert _published(services["ingress"])[8080] == IngressSettings().port
    for name in QT_SERVICES:
        port = defaults.metrics_port_base + SERVICE_PORT_OFFSETS[name]
        assert _published(services[name]).get(port) == port, f"{name} metrics port {port}"
    hosts = [h for s in services.values() for h in _published(s).values()]
    assert len(hosts) == len(set(hosts)), f"a host port is published twice: {sorted(hosts)}"


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def test_container_settings_load_and_point_at_services(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    for name in (*QT_SERVICES, "init", "fakesnow"):
        env = _environment(services[name])
        for key in list(os.environ):
            if key.startswith("QUERYTRAIL_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        host = settings.kafka.bootstrap_servers.split(":")[0]
        assert host in services, f"{name}: Kafka host {host} is not a service"
        assert urlparse(settings.iceberg.catalog_uri or "").hostname in services
        assert urlparse(settings.iceberg.properties["s3.endpoint"]).hostname in services
        assert settings.snowflake_profiles["analytics"].host in services
        assert settings.identity.dev_issuer_enabled and settings.environment == "local"
        assert settings.metrics_host == "0.0.0.0"
    assert _environment(services["ingress"])["QUERYTRAIL_INGRESS__HOST"] == "0.0.0.0"


def test_init_script_imports_exist(compose: dict[str, Any]) -> None:
    script = compose["services"]["init"]["command"][0]
    tree = ast.parse(script.replace("; ", "\n"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                if not hasattr(module, alias.name):  # `from pkg import submodule`
                    importlib.import_module(f"{node.module}.{alias.name}")


def test_trino_catalog_and_dockerfile() -> None:
    props = dict(
        line.split("=", 1)
        for line in (ROOT / "infra/compose/trino/catalog/iceberg.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert props["connector.name"] == "iceberg" and props["iceberg.catalog.type"] == "rest"
    assert urlparse(props["iceberg.rest-catalog.uri"]).hostname == "iceberg-rest"
    dockerfile = (ROOT / "infra/compose/Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"^include = \[(.*)\]", pyproject, re.M)  # [tool.setuptools.packages.find]
    assert packages is not None
    for pkg in re.findall(r'"([^"*]+)\*?"', packages.group(1)):
        assert f"COPY {pkg} ./{pkg}" in dockerfile, f"the image lacks the {pkg} package"
    assert re.search(r"^COPY .*\bsetup\.py\b", dockerfile, re.M), (
        "the image would build without the native codec"
    )
