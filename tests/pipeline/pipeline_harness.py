"""A running pipeline for tests and the bench: the worker and the executor as real processes.

Both read one YAML config (``QUERYTRAIL_CONFIG``) pointed at the real broker, a topic prefix,
the real fakesnow server and a home holding the dev issuer's and the worker's keys.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from querytrail.settings import Settings, SnowflakeProfile

ROOT = Path(__file__).resolve().parents[2]
POLICY = Path(__file__).with_name("policy.yaml")
CATALOG = ROOT / "infra" / "catalog" / "demo.yaml"


def profile_dict(p: SnowflakeProfile) -> dict[str, Any]:
    return {
        "account": p.account,
        "user": p.user,
        "password": p.password.get_secret_value() if p.password else None,
        "host": p.host,
        "port": p.port,
        "protocol": p.protocol,
        "database": p.database,
        "schema": p.schema_,
        "login_timeout_s": p.login_timeout_s,
        "network_timeout_s": p.network_timeout_s,
    }


class Pipeline:
    """Config, keys and the two processes of one isolated pipeline (own topics and home)."""

    def __init__(
        self,
        home: Path,
        bootstrap: str,
        prefix: str,
        profile: SnowflakeProfile,
        *,
        policy: Path = POLICY,
        catalog: Path | None = CATALOG,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.policy_path = home / "policy.yaml"
        self.policy_path.write_bytes(policy.read_bytes())
        config: dict[str, Any] = {
            "home": str(home),
            "environment": "local",
            "log_format": "text",
            "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix},
            "snowflake_profiles": {"analytics": profile_dict(profile)},
            "default_target": "analytics",
            "identity": {"dev_issuer_enabled": True},
            "policy_path": str(self.policy_path),
            "executor": {"catalog_refresh_s": 3600, "statement_timeout_s": 30},
            "worker": {"expiry_check_s": 0.5, "policy_reload_s": 0.5},
        }
        if catalog is not None:
            config["catalog_path"] = str(catalog)
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
        self.config_path = home / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.settings = Settings(
            **{k: v for k, v in config.items() if k != "snowflake_profiles"},
            snowflake_profiles={"analytics": profile},
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._prepare_keys()

    def _prepare_keys(self) -> None:
        """Create every key before any process starts (no two processes race to create one)."""
        from processors.decision.authz import load_or_create_signing_key
        from querytrail import sealing
        from querytrail.devissuer import jwks_document
        from querytrail.keys import ensure_service_keys

        sealing.ensure_keys(self.settings)
        path = self.settings.key_path("authz_signing_key")
        load_or_create_signing_key(path, sealing.public_path(path))
        ensure_service_keys(self.settings)  # every service signs what it publishes
        jwks_document(self.settings)  # creates the dev issuer's key

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYTRAIL_")}
        env.update({"QUERYTRAIL_CONFIG": str(self.config_path), "QUERYTRAIL_HOME": str(self.home)})
        env.update(extra)
        return env

    def log(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.log(name), "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "querytrail.cli", name],
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
        )
        self.procs[name] = proc
        return proc

    def wait_log(self, name: str, text: str, timeout: float = 90.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.log(name).read_bytes() if self.log(name).exists() else b""
            if text.encode() in data[after:]:
                return
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited {proc.returncode}:\n{data[-4000:].decode(errors='replace')}"
                )
            time.sleep(0.2)
        others = "".join(f"\n--- {o}:\n{self.tail(o, 2000)}" for o in self.procs if o != name)
        raise TimeoutError(f"{name} did not log {text!r} in {timeout}s:\n{self.tail(name)}{others}")

    def tail(self, name: str, n: int = 4000) -> str:
        return self.log(name).read_bytes()[-n:].decode(errors="replace") if self.log(name).exists() else ""

    def start_all(self) -> None:
        self.start("worker")
        self.start("executor")
        self.wait_log("worker", "Worker]: Ready")
        self.wait_log("executor", "executor consuming")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def stop(self) -> None:
        for name in list(self.procs)[::-1]:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.procs.clear()

    # -- client side -------------------------------------------------------------------------

    def token(self, sub: str, groups: tuple[str, ...] = (), **claims: Any) -> str:
        from querytrail.devissuer import mint_token

        return mint_token(self.settings, sub=sub, groups=groups, claims=claims, ttl_s=600)

    def submit(self, sql: str, token: str, *, wait: float = 60.0, max_rows: int | None = None) -> Any:
        """Submit through the CI client (what ``querytrail submit`` does) and wait for the outcome."""
        from ingress.client import QueryClient
        from schemas.events import ClientContext, Target

        client = QueryClient(self.settings)
        sub = client.submit(
            token=token,
            request_id=f"req-{uuid.uuid4()}",
            prompt="test prompt",
            sql=sql,
            model="test-model",
            target=Target(profile="analytics"),
            context=ClientContext(ci_provider="local"),
            max_rows=max_rows,
        )
        try:
            return sub.wait(wait)
        finally:
            sub.close()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "querytrail.cli", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )


def new_prefix() -> str:
    return f"qtp{uuid.uuid4().hex[:8]}"
