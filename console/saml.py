"""SAML 2.0 service provider (pysaml2): signed assertions only, audience, recipient, time, no replay.

pysaml2 checks the assertion's signature against the IdP's metadata certificate (through the
``xmlsec1`` binary), the audience (our entity id), the subject confirmation's recipient (our ACS
URL), NotBefore/NotOnOrAfter (``accepted_time_diff`` of skew) and InResponseTo (only requests
this console sent, each answered once). On top of that the console remembers every accepted
assertion id until its NotOnOrAfter, so a captured response posted again is refused even if
its request were still outstanding.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import Any

__all__ = ["SamlError", "SamlLogin"]

log = logging.getLogger(__name__)
_OUTSTANDING_TTL_S = 600.0


class SamlError(Exception):
    """Sign-in refused; the message is safe to show."""


class SamlLogin:
    """Sends AuthnRequests (HTTP-Redirect) and accepts signed responses (HTTP-POST)."""

    def __init__(self, entity_id: str, acs_url: str, idp_metadata_xml: str, *, time_skew_s: int = 30) -> None:
        from saml2 import BINDING_HTTP_POST
        from saml2.client import Saml2Client
        from saml2.config import SPConfig

        xmlsec = shutil.which("xmlsec1")
        if xmlsec is None:
            raise ValueError("SAML needs the xmlsec1 binary (Debian: apt-get install xmlsec1)")
        conf = SPConfig()
        conf.load(
            {
                "entityid": entity_id,
                "xmlsec_binary": xmlsec,
                "metadata": {"inline": [idp_metadata_xml]},
                "accepted_time_diff": time_skew_s,
                "allow_unknown_attributes": True,
                "service": {
                    "sp": {
                        "endpoints": {"assertion_consumer_service": [(acs_url, BINDING_HTTP_POST)]},
                        "allow_unsolicited": False,
                        "want_assertions_signed": True,
                        "want_response_signed": False,
                        "authn_requests_signed": False,
                        "name_id_format_allow_create": False,
                    }
                },
            }
        )
        self._client = Saml2Client(config=conf)
        idps = list(self._client.metadata.identity_providers())
        if len(idps) != 1:
            raise ValueError(f"the IdP metadata must name exactly one IdP, not {len(idps)}")
        self.idp = idps[0]
        self._lock = threading.Lock()
        self._outstanding: dict[str, float] = {}  # AuthnRequest id -> sent at
        self._seen: dict[str, float] = {}  # accepted assertion id -> its NotOnOrAfter

    def begin(self) -> str:
        """The IdP URL (HTTP-Redirect binding) carrying a fresh AuthnRequest."""
        from saml2 import BINDING_HTTP_REDIRECT

        req_id, info = self._client.prepare_for_authenticate(entityid=self.idp, binding=BINDING_HTTP_REDIRECT)
        now = time.time()
        with self._lock:
            self._outstanding = {k: v for k, v in self._outstanding.items() if now - v < _OUTSTANDING_TTL_S}
            self._outstanding[str(req_id)] = now
        return str(dict(info["headers"])["Location"])

    def finish(self, saml_response: str) -> tuple[str, dict[str, list[str]]]:
        """(NameID, attributes) of a verified response to one of our requests; SamlError otherwise."""
        from saml2 import BINDING_HTTP_POST

        if not saml_response or len(saml_response) > 200_000:
            raise SamlError("no usable SAMLResponse")
        with self._lock:
            outstanding = {k: "/" for k in self._outstanding}
        try:
            resp = self._client.parse_authn_request_response(
                saml_response, BINDING_HTTP_POST, outstanding=outstanding
            )
        except Exception as exc:  # pysaml2 raises many types; each one is a refusal
            log.info("SAML response refused: %s", type(exc).__name__)
            raise SamlError(f"the SAML response was refused ({type(exc).__name__})") from None
        if resp is None or resp.assertion is None:
            raise SamlError("the SAML response carries no assertion")
        if not getattr(resp.assertion, "signature", None):
            raise SamlError("the SAML assertion is not signed")  # belt and braces over want_assertions_signed
        assertion_id = str(resp.assertion.id)
        expires = max(time.time() + _OUTSTANDING_TTL_S, _not_on_or_after(resp.assertion))
        now = time.time()
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            if assertion_id in self._seen:
                raise SamlError("this SAML assertion was already used (replay refused)")
            self._seen[assertion_id] = expires
            self._outstanding.pop(str(resp.in_response_to), None)
        name_id = resp.name_id.text if resp.name_id is not None else None
        if not name_id:
            raise SamlError("the SAML assertion names no subject")
        attributes = {
            str(k): [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in resp.ava.items()
        }
        return str(name_id), attributes


def _not_on_or_after(assertion: Any) -> float:
    """The assertion's NotOnOrAfter as epoch seconds (0 when absent or unreadable)."""
    from datetime import datetime

    text = getattr(getattr(assertion, "conditions", None), "not_on_or_after", None)
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() if text else 0.0
    except ValueError:
        return 0.0
