"""All of querytrail's settings in one frozen pydantic-settings model.

Read from ``QUERYTRAIL_*`` environment variables (nested with ``__``, e.g.
``QUERYTRAIL_KAFKA__BOOTSTRAP_SERVERS``) and, when ``QUERYTRAIL_CONFIG`` names one, a YAML file
(without it: ``$QUERYTRAIL_HOME/run/stack.yaml``, written by ``querytrail up`` while the local stack runs).
Environment variables win over the file. Every setting and its default is listed in
``docs/settings.md``; keep that table in step when adding a field here.

Secrets are ``SecretStr`` and never logged. Key files are paths: only the component that
needs a private key reads it (the worker reads the authorisation signing key, the sink the
chain signing key, the executor the Snowflake credentials).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ExecutorSettings",
    "IcebergSettings",
    "IdentitySettings",
    "IngressSettings",
    "IssuerSettings",
    "KafkaSettings",
    "LimitSettings",
    "LocalStackSettings",
    "McpSettings",
    "ReconcileSettings",
    "Settings",
    "SigningSettings",
    "SnowflakeProfile",
    "WorkerSettings",
    "get_settings",
]


def _default_home() -> Path:
    return Path(os.environ.get("QUERYTRAIL_HOME", str(Path.home() / ".querytrail")))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    topic_prefix: str = "querytrail"
    partitions: int = 3
    replication_factor: int = 1
    schema_registry_url: str | None = None  # when set, Confluent framing is used to produce
    delivery_timeout_s: float = 30.0  # a produce fails (naming the broker) after this, never hangs
    fetch_wait_max_ms: int = 10  # a consumer's long poll; short, so a record is seen within ms

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every confluent-kafka client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            conf["ssl.certificate.location"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            conf["ssl.key.location"] = str(self.ssl_keyfile)
        return conf


class SnowflakeProfile(_Frozen):
    """A named Snowflake connection profile (a request's ``target``)."""

    account: str = "fakesnow"
    user: str = "querytrail"
    password: SecretStr | None = None  # the emulator; real accounts use key-pair auth
    private_key_path: Path | None = None  # PKCS#8 PEM for key-pair (JWT) auth
    private_key_passphrase: SecretStr | None = None
    host: str | None = None  # e.g. 127.0.0.1 for fakesnow
    port: int | None = None
    protocol: Literal["http", "https"] = "https"
    database: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    warehouse: str | None = None
    role: str | None = None
    login_timeout_s: int = 30
    network_timeout_s: int = 60


class IcebergSettings(_Frozen):
    catalog_name: str = "querytrail"
    catalog_type: Literal["sql", "rest"] = "sql"
    catalog_uri: str | None = None  # default: sqlite file under QUERYTRAIL_HOME/iceberg
    warehouse: str | None = None  # default: file:// under QUERYTRAIL_HOME/iceberg/warehouse
    properties: dict[str, str] = Field(default_factory=dict)  # s3.endpoint, s3.access-key-id, ...
    table: str = "audit.events"
    commit_interval_s: float = 1.0
    batch_size: int = 5000
    sink_workers: int = 0  # processes decoding for the audit sink (0: decode in the sink's thread)


class IssuerSettings(_Frozen):
    """One trusted OIDC issuer and how its claims map to an Identity."""

    issuer: str
    audience: str = "querytrail"
    jwks_uri: str | None = None  # default: discovered from /.well-known/openid-configuration
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    required_claims: list[str] = Field(default_factory=lambda: ["sub", "exp", "iat"])
    service_account_claim: str | None = None  # claim whose presence/truthiness marks a service account
    service_account: bool = False  # every subject of this issuer is a service account (CI issuers)
    ci_claims: list[str] = Field(
        default_factory=lambda: ["repository", "workflow", "ref", "run_id", "sha", "actor"]
    )
    # Identity field -> claim name where the issuer differs, e.g. {"repository": "project_path"}
    claim_map: dict[str, str] = Field(default_factory=dict)


class IdentitySettings(_Frozen):
    issuers: list[IssuerSettings] = Field(default_factory=list)
    leeway_s: int = 30
    jwks_cache_ttl_s: int = 3600
    jwks_min_refetch_interval_s: float = 60.0
    http_timeout_s: float = 5.0
    dev_issuer_enabled: bool = False  # only the local stack turns this on; never in production
    dev_issuer_url: str = "http://127.0.0.1:8080/dev-issuer"


class IngressSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    auditor_groups: list[str] = Field(default_factory=lambda: ["auditor"])
    max_wait_s: float = 120.0
    publish_timeout_s: float = 10.0  # delivery-report wait before answering 503
    index_max_requests: int = 10_000  # outcomes kept in memory for GET /v1/queries/{id}
    index_lookback_s: float = 3600.0  # on start, index outcomes newer than this


class NotificationSettings(_Frozen):
    """Approval webhooks (processors/notifier/bodies.py, docs/notifications.md); none: no notifier runs."""

    # each: {name, kind: slack|generic, url | url_env, secret_env | secret_file, rules, approver_groups}
    webhooks: list[dict[str, Any]] = Field(default_factory=list)
    console_url: str = ""  # base URL of the console; notes link to <console_url>/approvals/<request_id>
    max_attempts: int = 5  # tries per webhook and event
    base_delay_s: float = 0.5  # backoff before try n+1: base_delay_s * 2**(n-1), capped by max_delay_s
    max_delay_s: float = 30.0
    timeout_s: float = 5.0  # per HTTP request


class McpSettings(_Frozen):
    """The MCP server (ingress/mcp_server.py): limits an agent cannot talk around."""

    calls_per_minute: int = 60  # tool calls per verified identity (token bucket, burst of the same size)
    default_max_rows: int = 100  # rows a run_query result carries when the agent names no max_rows
    max_rows: int = 1000  # the most rows any tool result carries, whatever the agent asks
    max_result_bytes: int = 65_536  # JSON bytes of rows in one tool result; rows past it are cut
    run_wait_s: float = 20.0  # run_query waits this long for an outcome before answering "running"
    max_wait_s: float = 300.0  # the longest wait_for_approval blocks


class LimitSettings(_Frozen):
    max_prompt_bytes: int = 65_536
    max_sql_bytes: int = 262_144


class ExecutorSettings(_Frozen):
    statement_timeout_s: int = 60
    page_max_rows: int = 500
    page_max_bytes: int = 262_144
    catalog_refresh_s: float = 300.0
    authorization_max_age_s: float = 900.0
    concurrency: int = 8  # statements run in parallel (each request still runs at most once)
    commit_interval_s: float = 1.0  # handled offsets are committed this often (asynchronously)
    read_cost: bool = True  # read each statement's QUERY_HISTORY row (bytes scanned, partitions, queue)
    cost_alert_factor: float = 10.0  # alert when bytes scanned exceed the estimate by this factor
    cost_alert_min_bytes: int = 1_048_576  # ... and are above this (tiny scans never alert)


class ReconcileSettings(_Frozen):
    """``querytrail reconcile`` (docs/warehouse.md): Snowflake's query history against the log."""

    latency_s: float = 2700.0  # ACCOUNT_USAGE.QUERY_HISTORY lags up to 45 min: re-read this far back
    lookback_s: float = 86_400.0  # how far back the first run looks
    interval_s: float = 300.0  # how often `reconcile --service` runs
    settle_s: float = 60.0  # statements younger than this wait for the next run (the sink's lag)
    service_users: list[str] = Field(default_factory=list)  # besides the profiles' users
    agent_users: list[str] = Field(default_factory=list)  # Snowflake users known to be agents
    agent_tags: list[str] = Field(default_factory=list)  # globs on QUERY_TAG that mark agents' statements


class WorkerSettings(_Frozen):
    authorization_ttl_s: float = 300.0  # an ExecutionAuthorized is valid this long
    expiry_check_s: float = 1.0  # how often pending approvals are checked for expiry
    policy_reload_s: float = 2.0  # how often the policy file is checked for changes
    catalog_reload_s: float = 30.0  # how often the catalog topic is re-read
    resolved_retention_s: float = 86_400.0  # resolved approvals are kept this long for late verdicts
    reconcile_s: float = 10.0  # how often requests committed past but never decided are looked for
    reconcile_window_s: float = 3600.0  # how far back the first look goes after a start
    reconcile_grace_s: float = 30.0  # a request older than this and not decided is decided by the reconciler
    commit_every: int = 100  # input offsets are committed after this many records (or commit_interval_s)
    commit_interval_s: float = 1.0  # ... or this often; redelivered requests are deduplicated


class SigningSettings(_Frozen):
    """Event signatures (docs/security.md): who signs, which public keys each topic trusts."""

    enabled: bool = True  # producers sign and consumers refuse unsigned records on signed topics
    keys: dict[str, Path] = Field(default_factory=dict)  # service -> private key (default: home/keys)
    # topic suffix -> public keys trusted for it (rotation: list the new and the old key);
    # default: the public halves of the keys of the services that produce the topic
    trusted: dict[str, list[Path]] = Field(default_factory=dict)
    attestation_ttl_s: float = 900.0  # an ingress attestation is valid this long after issue


class LocalStackSettings(_Frozen):
    kafka_version: str = "4.4.0"  # keep equal to infra/kafka.py KAFKA_VERSION (why: see there)
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "-Xms256m -Xmx1g"
    fakesnow_port: int = 18080
    java_home: Path | None = None
    jar_cache: Path | None = None  # Maven-downloaded Kafka jars; default: home/cache
    fakesnow_startup_timeout_s: float = 60.0
    kafka_startup_timeout_s: float = 90.0
    keycloak_port: int = 18180  # `querytrail up --with keycloak`
    keycloak_startup_timeout_s: float = 600.0  # a loaded 2-core machine: minutes (docs/keycloak.md)


class Settings(BaseSettings):
    """querytrail's settings. See docs/settings.md for the table."""

    model_config = SettingsConfigDict(
        env_prefix="QUERYTRAIL_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        populate_by_name=True,
    )

    home: Path = Field(default_factory=_default_home)
    environment: Literal["local", "production"] = "local"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    snowflake_profiles: dict[str, SnowflakeProfile] = Field(default_factory=dict)
    default_target: str = "analytics"
    iceberg: IcebergSettings = Field(default_factory=IcebergSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    local: LocalStackSettings = Field(default_factory=LocalStackSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    policy_path: Path | None = None  # default: infra/policies/example.yaml
    catalog_path: Path | None = None  # optional static catalog file (else the catalog topic)
    authz_signing_key_path: Path | None = None  # Ed25519, read only by the worker
    authz_verify_key_path: Path | None = None  # its public half, read by the executor
    chain_signing_key_path: Path | None = None  # Ed25519, read only by the sink
    chain_verify_key_path: Path | None = None
    token_sealing_key_path: Path | None = None  # X25519 private key, read only by the worker
    ingress_signing_key_path: Path | None = None  # Ed25519, read only by the HTTP ingress
    metrics_port_base: int = 9300
    metrics_host: str = "127.0.0.1"  # where /metrics listens; 0.0.0.0 inside a container

    @model_validator(mode="after")
    def _no_dev_issuer_in_production(self) -> Settings:
        # Tokens minted from a key on a developer's disk must never be trusted in production.
        if self.environment == "production" and self.identity.dev_issuer_enabled:
            raise ValueError("identity.dev_issuer_enabled must be false when environment is production")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings)

    # Paths derived from ``home`` for the local stack.
    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    def key_path(self, name: str) -> Path:
        """The configured path of a key file, or its default under ``home/keys``."""
        configured = getattr(self, f"{name}_path", None)
        return Path(configured) if configured else self.keys_dir / f"{name}.pem"


class _YamlSource(PydanticBaseSettingsSource):
    """The optional YAML file named by ``QUERYTRAIL_CONFIG``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("QUERYTRAIL_CONFIG")
        if not path:
            # While `querytrail up` runs the local stack, its endpoints are the defaults.
            stack = _default_home() / "run" / "stack.yaml"
            if not stack.is_file():
                return {}
            path = str(stack)
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config file must hold a mapping")
        return data


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
