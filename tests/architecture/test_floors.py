"""The floors of docs/architecture.md, checked on the source with ``ast``.

From the ground up::

    0 schemas                      event vocabulary, codec, topics and their consumer groups
    1 querytrail (the kernel)      settings, observability, keys, identity, sealing, Kafka clients,
                                   publishing, escaping (everything in querytrail/ but cli/)
    2 processors.decision          the pure decision core
    3 services                     processors.worker, processors.executor, ingress, sinks
    4 the CLI, the console, infra  querytrail.cli, console, infra (the local stack)

An import may go to its own floor or any floor below, never up; services do not import each other
(``SIDEWAYS`` lists the reviewed exceptions, each with its reason); nothing imports ``infra``
except infra itself and the CLI; the module graph has no circle. Every import counts, including
the lazy ones inside functions and those under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import graphlib
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("schemas", "querytrail", "processors", "ingress", "sinks", "infra", "console")

FLOORS: tuple[tuple[str, ...], ...] = (
    ("schemas",),
    ("querytrail",),
    ("processors", "processors.decision"),
    ("processors.worker", "processors.executor", "processors.notifier", "ingress", "sinks"),
    ("querytrail.cli", "console", "infra"),
)
SERVICES = FLOORS[3]
# Service -> service imports that were reviewed; anything new here needs a reason.
SIDEWAYS: dict[tuple[str, str], str] = {
    (
        "ingress.mcp_server",
        "processors.worker.runtime",
    ): "the MCP dry run decides with the worker's own policy and catalog loader, so a dry run "
    "and the real decision cannot disagree",
}
KAFKA_CLIENTS = ("confluent_kafka", "aiokafka", "faust", "kafka", "mode")
STORAGE = ("pyiceberg", "duckdb", "pyarrow", "snowflake", "starlette", "uvicorn", "httpx")
SNOWFLAKE_ALLOWED = ("processors.executor", "infra")
PYICEBERG_ALLOWED = ("sinks", "querytrail.cli", "console", "infra")
# The kernel modules the decision core may use: pure ones (no Kafka, no HTTP server, no storage).
KERNEL_PURE = (
    "querytrail.settings",
    "querytrail.keys",
    "querytrail.escape",
    "querytrail.query_tag",
    "querytrail.envelope",
)
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
# Third-party packages the decision core may import besides sqlglot: parsing its own inputs
# (policy YAML, catalog JSON) and the Ed25519 signatures of authorisations.
DECISION_THIRD_PARTY = ("sqlglot", "yaml", "orjson", "cryptography")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in OURS:
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
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


def floor(module: str) -> int:
    """The highest floor whose prefix ``module`` falls under (querytrail.cli beats querytrail)."""
    best, length = -1, -1
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if _is(module, prefix) and len(prefix) > length:
                best, length = level, len(prefix)
    assert best >= 0, f"{module} is on no floor: add it to FLOORS and docs/architecture.md"
    return best


def service(module: str) -> str | None:
    return next((s for s in SERVICES if _is(module, s)), None)


def edges() -> set[tuple[str, str]]:
    """(importer, imported) for every import between two different modules of ours."""
    out = set()
    for mod in MODULES:
        for name in imports(mod):
            target = _ours(name)
            if target is not None and target != mod and not _is(mod, target):
                out.add((mod, target))  # a package importing its own submodule is not an edge back
    return out


def _closure(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for name in imports(todo.pop()):
            mod = _ours(name)
            if mod is not None and mod not in seen:
                seen.add(mod)
                todo.append(mod)
    return seen


def test_the_scan_sees_every_floor() -> None:
    assert {
        "schemas.events",
        "querytrail.settings",
        "processors.decision.statement",
        "processors.executor.runner",
        "processors.worker.app",
        "ingress.app",
        "sinks.table",
        "querytrail.cli",
        "infra.stack",
    } <= set(MODULES)
    assert any(_is(n, "snowflake.connector") for n in imports("processors.executor.runner"))
    for mod in MODULES:
        floor(mod)  # every module is on a floor


def test_no_import_runs_back_up() -> None:
    up = sorted(
        f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})" for a, b in edges() if floor(b) > floor(a)
    )
    assert not up, "imports that run back up:\n" + "\n".join(up)


def test_services_do_not_import_each_other() -> None:
    bad = []
    for a, b in sorted(edges()):
        sa, sb = service(a), service(b)
        if sa and sb and sa != sb and (a, b) not in SIDEWAYS:
            bad.append(f"{a} imports {b}")
    assert not bad, "service -> service imports (move the shared piece down a floor):\n" + "\n".join(bad)
    for a, b in SIDEWAYS:  # the exceptions still exist, or they are stale
        assert (a, b) in edges(), f"stale SIDEWAYS entry {a} -> {b}"


def test_nothing_imports_infra_but_the_cli() -> None:
    bad = sorted(
        f"{a} imports {b}" for a, b in edges() if _is(b, "infra") and not _is(a, ("infra", "querytrail.cli"))
    )
    assert not bad, "only the commands that start the local stack import infra:\n" + "\n".join(bad)


def test_no_circle() -> None:
    # graphlib names one circle when there is any (no recursion: the analyser's own tests rely on
    # Python's default recursion limit, so this test must not raise it)
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for a, b in edges():
        graph[a].add(b)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


def test_schemas_imports_nothing_of_ours() -> None:
    bad = sorted(
        (mod, name)
        for mod in MODULES
        if _is(mod, "schemas")
        for name in imports(mod)
        if _is(name, OURS) and not _is(name, "schemas")
    )
    assert not bad, f"schemas must import nothing of ours: {bad}"


def test_decision_imports_only_schemas_the_pure_kernel_sqlglot_and_stdlib() -> None:
    bad = {}
    for mod in MODULES:
        if not _is(mod, "processors.decision"):
            continue
        for name in imports(mod):
            top = name.split(".")[0]
            if _is(name, OURS):
                ok = _is(name, ("schemas", "processors.decision", *KERNEL_PURE)) or name == "querytrail"
            else:
                ok = top in STDLIB or top in DECISION_THIRD_PARTY
            if not ok:
                bad.setdefault(mod, []).append(name)
    assert not bad, f"the decision core imports beyond its floor: {bad}"


def test_decision_reaches_no_kafka_or_storage_code() -> None:
    bad = {}
    for mod in MODULES:
        if not _is(mod, "processors.decision"):
            continue
        for reached in _closure(mod):
            hits = sorted(n for n in imports(reached) if _is(n, KAFKA_CLIENTS + STORAGE))
            if hits:
                bad[mod] = (reached, hits)
    assert not bad, f"decision code reaches Kafka/storage code (module -> (via, imports)): {bad}"


def test_only_the_executor_imports_snowflake_connector() -> None:
    users = {mod for mod in MODULES if any(_is(n, "snowflake") for n in imports(mod))}
    assert all(_is(u, SNOWFLAKE_ALLOWED) for u in users), f"snowflake.connector imported by {sorted(users)}"
    assert "processors.executor.runner" in users


def test_only_sinks_and_the_top_floor_import_pyiceberg() -> None:
    users = {mod for mod in MODULES if any(_is(n, "pyiceberg") for n in imports(mod))}
    outside = sorted(m for m in users if not _is(m, PYICEBERG_ALLOWED))
    assert not outside, f"pyiceberg imported outside sinks: {outside}"
