"""`querytrail policy check` and `querytrail policy lint`: the JSON contract and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from querytrail.cli import main

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "infra" / "policies" / "example.yaml"
CATALOG = ROOT / "infra" / "catalog" / "demo.yaml"
KEYS = [
    "decision", "rules", "reasons", "statement", "tables", "findings", "masked_columns",
    "rewritten_sql", "estimated_bytes", "policy_sha256", "masked_reads", "unmasked_columns",
]  # fmt: skip


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    path = tmp_path / "claims.json"
    path.write_text(
        json.dumps(
            {
                "sub": "ci-bot",
                "iss": "https://token.actions.githubusercontent.com",
                "groups": ["ci"],
                "repository": "acme/etl",
            }
        )
    )
    return path


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", "check", "--policy", str(POLICY), "--catalog", str(CATALOG), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_allow_prints_one_json_object(capsys: pytest.CaptureFixture[str], claims: Path) -> None:
    code, out, _ = check(
        capsys,
        "--claims",
        str(claims),
        "--sql",
        "SELECT id, ssn FROM analytics.public.customers WHERE id = 7",
    )
    assert code == 0
    data = json.loads(out)
    assert list(data) == KEYS
    assert data["decision"] == "allow"
    assert data["masked_columns"] == [
        {
            "output": "SSN",
            "source": "ANALYTICS.PUBLIC.CUSTOMERS.SSN",
            "classification": "pii.ssn",
            "mask": "last4",
        }
    ]
    assert out.count("\n") == 1


def test_deny_and_approval_also_exit_zero(
    capsys: pytest.CaptureFixture[str], claims: Path, tmp_path: Path
) -> None:
    code, out, _ = check(
        capsys, "--sql", "SELECT id FROM analytics.public.customers WHERE id = 7"
    )  # no claims
    assert code == 0 and json.loads(out)["decision"] == "deny"
    assert json.loads(out)["rewritten_sql"] is None
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("SELECT username FROM users WHERE role = 'SYSADMIN'")
    args = (
        "--claims",
        str(claims),
        "--sql-file",
        str(sql_file),
        "--database",
        "SECURITY",
        "--schema",
        "ADMIN",
    )
    code, out, _ = check(capsys, *args, "--at", "2026-11-27T12:00:00Z")
    data = json.loads(out)
    assert code == 0 and data["decision"] == "require_approval"
    assert data["tables"] == ["SECURITY.ADMIN.USERS"]
    assert [f["code"] for f in data["findings"]] == ["privileged_table"]
    code, out, _ = check(capsys, *args, "--at", "2026-11-27T03:00:00")  # naive: UTC, in the night window
    assert code == 0 and json.loads(out)["decision"] == "deny"
    assert "nightly-privileged" in json.loads(out)["rules"]


def test_text_format_escapes_control_characters(capsys: pytest.CaptureFixture[str], claims: Path) -> None:
    sql = 'SELECT id, email AS "e\x1b[31m" FROM analytics.public.customers WHERE id = 1'
    code, out, _ = check(capsys, "--claims", str(claims), "--format", "text", "--sql", sql)
    assert code == 0
    assert "\x1b" not in out
    assert "decision:        ALLOW" in out
    assert "pii.email -> email" in out


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--at", "yesterday", "--sql", "SELECT 1"], "not an ISO-8601 time"),
        (["--claims", "/nonexistent/claims.json", "--sql", "SELECT 1"], "cannot read claims"),
        (["--sql-file", "/nonexistent.sql"], "cannot read --sql-file"),
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str) -> None:
    code, out, err = check(capsys, *extra)
    assert code == 2 and out == "" and fragment in err


def test_claims_must_be_an_object(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("[1, 2]")
    code, _, err = check(capsys, "--claims", str(bad), "--sql", "SELECT 1")
    assert code == 2 and "JSON object" in err


def test_missing_sql_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "check", "--policy", str(POLICY), "--catalog", str(CATALOG)])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(
            [
                "policy",
                "check",
                "--policy",
                str(POLICY),
                "--catalog",
                str(CATALOG),
                "--sql",
                "x",
                "--sql-file",
                "y",
            ]
        )
    assert info.value.code == 2


def test_invalid_policy_exits_2_naming_line_and_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - id: r\n    when: {estimated_bytes_gt: 10XB}\n    then: deny\n")
    code = main(["policy", "check", "--policy", str(bad), "--catalog", str(CATALOG), "--sql", "SELECT 1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert f"{bad}:4: bad size unit 'XB'" in err
    bad_catalog = tmp_path / "cat.yaml"
    bad_catalog.write_text("tables: [1]\n")
    code = main(
        ["policy", "check", "--policy", str(POLICY), "--catalog", str(bad_catalog), "--sql", "SELECT 1"]
    )
    assert code == 2 and "invalid catalog" in capsys.readouterr().err


def test_lint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["policy", "lint", str(POLICY)]) == 0
    assert "ok (" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nrules:\n  - id: r\n    then: {require_approval: {approvers: [a], min_approvals: 0}}\n"
    )
    assert main(["policy", "lint", str(bad)]) == 2
    assert f"{bad}:4: min_approvals must be >= 1" in capsys.readouterr().err


def test_console_script_end_to_end(claims: Path) -> None:
    exe = Path(sys.executable).with_name("querytrail")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "querytrail.cli"]
    proc = subprocess.run(
        [*argv, "policy", "check", "--policy", str(POLICY), "--catalog", str(CATALOG), "--claims", str(claims),
         "--sql", "COPY INTO @~/x FROM (SELECT email FROM analytics.public.customers)"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["decision"] == "deny" and "data_export" in [f["code"] for f in data["findings"]]
