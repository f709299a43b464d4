"""The built wheel holds the whole program: every module and data file, and it runs from there.

CI and the tests use an editable install, which imports straight from the source tree and so
cannot notice a subpackage or a data file left out of the wheel (``processors.decision.analysis`` and
``processors.decision.policy`` once were). This builds the wheel as ``pip wheel .`` does, installs it
into a directory of its own, and runs it from outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("querytrail", "schemas", "ingress", "processors", "sinks", "infra")
# files read at run time, besides the modules (relative to the repo root)
DATA_GLOBS = (
    "schemas/avsc/*.avsc",
    "schemas/avsc/previous/*.avsc",
    "infra/*.yaml",
    "infra/*.properties",
    "infra/policies/*.yaml",
    "infra/catalog/*.yaml",
    "infra/sql/**/*.sql",
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # from a clean copy: setuptools reuses ./build, so a checkout that was built before would
    # lend the wheel files the package configuration leaves out
    src = tmp_path_factory.mktemp("src") / "querytrail"
    junk = ("build", "*.egg-info", ".*", "__pycache__", "*.so", "tests", "bench", "docs")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*junk))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("querytrail-*.whl")
    return built


def test_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        p.relative_to(ROOT).as_posix()
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    expected |= {p.relative_to(ROOT).as_posix() for g in DATA_GLOBS for p in ROOT.glob(g)}
    assert "processors/decision/analysis/__init__.py" in expected  # the subpackages are in the list
    missing = sorted(expected - names)
    assert not missing, f"{len(missing)} files missing from {wheel.name}, e.g. {missing[:8]}"
    assert any(n.startswith("schemas/_cavro.") and n.endswith(".so") for n in names), "no native codec"
    assert (
        "querytrail = querytrail.cli:main"
        in zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
        .decode()
    )


def test_installed_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the editable install's finder
    env.pop("QUERYTRAIL_CONFIG", None)
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts and p.stem != "__main__"
    )
    probe = (
        "import importlib, json, pathlib, sys\n"
        f"target = pathlib.Path({str(target)!r}).resolve()\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    mod = importlib.import_module(name)\n"
        "    where = pathlib.Path(mod.__file__).resolve()\n"
        "    assert target in where.parents, (name, where)\n"
        "from schemas.codec import EventCodec\n"
        "assert EventCodec().backend == 'native', EventCodec().backend\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(modules)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "processors.decision.analysis" in modules and len(modules) > 50
    # the console script's code, run from the installed copy with its shipped policy and catalog
    claims = tmp_path / "claims.json"
    claims.write_text('{"sub": "ci-bot", "groups": ["ci"], "repository": "acme/app"}')
    cli = subprocess.run(
        [
            sys.executable, "-c", "from querytrail.cli import main; main()", "policy", "check",
            "--policy", str(target / "infra" / "policies" / "example.yaml"),
            "--catalog", str(target / "infra" / "catalog" / "demo.yaml"),
            "--claims", str(claims),
            "--sql", "SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 7",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    decision = json.loads(cli.stdout)
    assert decision["decision"] == "allow", decision
    assert [m["mask"] for m in decision["masked_columns"]] == ["email"], decision
