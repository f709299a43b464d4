"""docs/cli.md documents every sub-command the CLI has; README links resolve."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from querytrail.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    out = []
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix}{name} ")
                out += nested or [f"{prefix}{name}"]
    return out


def test_every_command_has_a_section() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    headings = {h.strip() for h in re.findall(r"^###\s+(.+)$", doc, re.M)}
    documented = {c.strip() for h in headings for c in h.split(" / ")}
    commands = _commands(build_parser())
    assert "demo" in commands and "policy check" in commands
    missing = [c for c in commands if c not in documented and f"`querytrail {c}" not in doc]
    assert not missing, f"add these to docs/cli.md: {missing}"


def test_readme_links_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), f"README links to a missing {target}"
