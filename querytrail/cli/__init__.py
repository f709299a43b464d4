"""The ``querytrail`` console script: a thin dispatcher over the command modules of this package.

The CLI is the top floor (docs/architecture.md): each module here exposes ``register(subparsers)``
for one group of commands and wires the services below it. The modules import nothing heavy at
module level so ``querytrail --help`` stays fast; handlers import lazily. A handler returns the
process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "infra.commands",  # up, down, status
    "querytrail.cli.ingress",  # token, submit, ingress, mcp
    "querytrail.cli.policy",  # policy check, policy lint
    "querytrail.cli.pipeline",  # worker, executor, approvals, approve, deny
    "querytrail.cli.audit",  # sink, verify, replay, query, report, compact
    "querytrail.cli.retention",  # audit expire, audit rotate-key
    "querytrail.cli.demo",  # demo
    "querytrail.cli.reconcile",  # reconcile (history vs the audit log)
    "console.commands",  # console (the web console)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="querytrail", description="Audit trail and control point for AI-generated Snowflake SQL"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
