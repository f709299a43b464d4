"""The console's own options (``querytrail console`` flags or ``QUERYTRAIL_CONSOLE_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["ConsoleConfig"]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"QUERYTRAIL_CONSOLE_{name}", default)


@dataclass(frozen=True)
class ConsoleConfig:
    """Where the console listens and which IdPs it signs users in with."""

    public_url: str = "http://127.0.0.1:8300"  # as browsers reach it: redirect and ACS URLs derive from it
    oidc_issuer: str | None = None  # must also be in identity.issuers (audience: the client id)
    oidc_client_id: str = "querytrail-console"
    saml_idp_metadata_url: str | None = None
    saml_entity_id: str = "querytrail-console-saml"
    session_ttl_s: int = 900
    verify_interval_s: float = 300.0
    verdict_wait_s: float = 30.0
    viewer_groups: tuple[str, ...] = field(default_factory=tuple)  # empty: any signed-in user may look

    @property
    def saml_issuer(self) -> str:
        """The issuer of the console's SAML bridge tokens (trust it in identity.issuers)."""
        return self.public_url.rstrip("/") + "/saml"

    @classmethod
    def from_env(cls, **overrides: object) -> ConsoleConfig:
        values: dict[str, object] = {}
        for name, key in (
            ("public_url", "PUBLIC_URL"),
            ("oidc_issuer", "OIDC_ISSUER"),
            ("oidc_client_id", "OIDC_CLIENT_ID"),
            ("saml_idp_metadata_url", "SAML_IDP_METADATA_URL"),
            ("saml_entity_id", "SAML_ENTITY_ID"),
        ):
            if (v := _env(key)) is not None:
                values[name] = v
        if (v := _env("SESSION_TTL_S")) is not None:
            values["session_ttl_s"] = int(v)
        if (v := _env("VIEWER_GROUPS")) is not None:
            values["viewer_groups"] = tuple(g for g in v.replace(",", " ").split() if g)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
