"""The layering rule of README.md's architecture part, checked on the source with ast.

- ``schemas`` imports nothing of ours;
- the processors' decision code imports no Kafka client, not even through our own modules;
- only the executor and the catalog sync import ``snowflake.connector`` (infra's local emulator
  tooling, which seeds and probes fakesnow, is the named exception);
- only ``sinks`` imports pyiceberg.

Every import counts, including the lazy ones inside functions.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("schemas", "ingress", "processors", "sinks", "infra", "querytrail")
KAFKA_CLIENTS = ("confluent_kafka", "aiokafka", "faust", "kafka", "mode")
# The pure decision code: plain Python, unit-tested without a broker.
DECISION = (
    "processors.analysis",
    "processors.policy",
    "processors.decide",
    "processors.masking",
    "processors.approvals",
    "processors.authz",
    "processors.catalog",
    "processors.detectors",
    "processors.worker",
)
SNOWFLAKE_ALLOWED = {
    "processors.executor",
    "processors.catalog_sync",
    # local emulator tooling, never deployed: starts, seeds and smoke-tests fakesnow
    "infra.fakesnow_server",
    "infra.seed",
    "infra.commands",
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in OURS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


@cache
def imports(module: str) -> frozenset[str]:
    """Every module name ``module`` imports (absolute, relative ones resolved)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return frozenset(names)


def _ours(name: str) -> str | None:
    """The module of ours that ``name`` refers to (longest known prefix), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return None


def _is(name: str, top: tuple[str, ...] | str) -> bool:
    tops = (top,) if isinstance(top, str) else top
    return any(name == t or name.startswith(t + ".") for t in tops)


def _closure(start: str) -> set[str]:
    """``start`` and every module of ours it reaches through imports."""
    seen, todo = {start}, [start]
    while todo:
        for name in imports(todo.pop()):
            mod = _ours(name)
            if mod is not None and mod not in seen:
                seen.add(mod)
                todo.append(mod)
    return seen


def test_the_scan_sees_the_packages() -> None:
    assert {"schemas.events", "processors.decide", "processors.executor", "sinks.table"} <= set(MODULES)
    assert any(_is(n, "snowflake.connector") for n in imports("processors.executor"))


def test_schemas_imports_nothing_of_ours() -> None:
    bad = {
        (mod, name)
        for mod in MODULES
        if _is(mod, "schemas")
        for name in imports(mod)
        if _is(name, OURS) and not _is(name, "schemas")
    }
    assert not bad, f"schemas must import nothing of ours: {sorted(bad)}"


def test_decision_code_reaches_no_kafka_client() -> None:
    bad = {}
    for mod in MODULES:
        if not _is(mod, DECISION):
            continue
        for reached in _closure(mod):
            clients = sorted(n for n in imports(reached) if _is(n, KAFKA_CLIENTS))
            if clients:
                bad[mod] = (reached, clients)
    assert not bad, f"decision code must not import a Kafka client (module -> (via, clients)): {bad}"


def test_only_executor_and_catalog_sync_import_snowflake_connector() -> None:
    users = {mod for mod in MODULES if any(_is(n, "snowflake") for n in imports(mod))}
    assert users <= SNOWFLAKE_ALLOWED, f"snowflake.connector imported by {sorted(users - SNOWFLAKE_ALLOWED)}"
    # the executor is the one place in the pipeline that connects (catalog_sync goes through it)
    assert "processors.executor" in users


def test_only_sinks_imports_pyiceberg() -> None:
    users = {mod for mod in MODULES if any(_is(n, "pyiceberg") for n in imports(mod))}
    outside = sorted(m for m in users if not _is(m, "sinks"))
    assert not outside, f"pyiceberg imported outside sinks: {outside}"
