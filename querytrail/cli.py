"""The ``querytrail`` console script: a thin dispatcher over each package's commands.

Each package exposes ``register(subparsers)`` in its ``commands`` module. Those modules import
nothing heavy at module level so ``querytrail --help`` stays fast; handlers import lazily.
A handler returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "infra.commands",  # up, down, status
    "ingress.commands",  # token, submit, ingress, mcp
    "processors.commands",  # policy check/lint, worker, executor, approvals, approve, deny
    "sinks.commands",  # sink, verify, replay, query, report, compact
    "querytrail.demo",  # demo
    "querytrail.reconcile_cli",  # reconcile (history vs the audit log)
    "console.commands",  # console (the web console)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="querytrail", description="Audit trail and control point for AI-generated Snowflake SQL"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package's commands are not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
