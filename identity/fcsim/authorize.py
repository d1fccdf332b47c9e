"""Validation of an authorization request, in FranceConnect's order (OpenID Connect Core 1.0
§3.1.2.1–§3.1.2.2; FranceConnect documentation, *Endpoints › Authorization Endpoint*).

1. ``client_id`` and ``redirect_uri`` first: an unknown client or a redirect URI not registered
   character for character gets an error page, never a redirect (RFC 6749 §4.1.2.1,
   RFC 9700 §4.1.1 — no open redirector).
2. Everything else is answered by a redirect to that URI with ``error``, ``error_description``,
   ``state`` and ``iss``: ``response_type=code`` only; ``scope`` with ``openid``; ``state`` and
   ``nonce`` of at least 32 characters (FranceConnect requires both); ``prompt`` limited to
   ``login`` and ``consent``; no ``request``/``request_uri``.
3. ``acr_values``: the lowest eIDAS level asked for; values FranceConnect does not know are
   ignored, and with none left the level is ``eidas1``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import NoReturn

from identity.fcsim.config import SimulatorConfig
from identity.fcsim.errors import (
    ErrorPage,
    InvalidAuthorizationRequest,
    InvalidScope,
    RequestNotSupported,
    RequestUriNotSupported,
    UnsupportedResponseType,
)
from identity.fcsim.identities import SCOPE_CLAIMS
from identity.fcsim.store import AuthorizationRequest

MIN_STATE_NONCE_LENGTH = 32
EIDAS_LEVELS = ("eidas1", "eidas2", "eidas3")
DEFAULT_ACR = "eidas1"
PROMPTS = frozenset({"login", "consent"})


def parse_authorization_request(
    params: Mapping[str, Sequence[str]], config: SimulatorConfig
) -> AuthorizationRequest:
    """The validated request, or :class:`ErrorPage` / an ``AuthorizationError`` subclass."""
    client_ids = params.get("client_id", [])
    if len(client_ids) != 1 or not client_ids[0]:
        raise ErrorPage("Paramètre client_id absent ou répété / client_id missing or repeated")
    client = config.client(client_ids[0])
    if client is None:
        raise ErrorPage("Fournisseur de service inconnu / Unknown service provider (client_id)")
    redirect_uris = params.get("redirect_uri", [])
    if len(redirect_uris) != 1 or redirect_uris[0] not in client.redirect_uris:
        raise ErrorPage(
            "redirect_uri non enregistrée pour ce fournisseur de service / "
            "redirect_uri is not registered for this service provider"
        )
    redirect_uri = redirect_uris[0]

    state_values = params.get("state", [])
    state = state_values[0] if len(state_values) == 1 else None

    def fail(cls: type[InvalidAuthorizationRequest] | type[InvalidScope], text: str) -> NoReturn:
        raise cls(text, redirect_uri, state)

    repeated = sorted(name for name, values in params.items() if len(values) > 1)
    if repeated:
        fail(InvalidAuthorizationRequest, f"parameters must not be repeated: {', '.join(repeated)}")
    value = {name: values[0] for name, values in params.items() if values}

    if "request" in value:
        raise RequestNotSupported("request objects are not supported", redirect_uri, state)
    if "request_uri" in value:
        raise RequestUriNotSupported("request_uri is not supported", redirect_uri, state)
    response_type = value.get("response_type")
    if not response_type:
        fail(InvalidAuthorizationRequest, "response_type is required")
    elif response_type != "code":
        raise UnsupportedResponseType("only response_type=code is supported", redirect_uri, state)
    if value.get("response_mode", "query") != "query":
        fail(InvalidAuthorizationRequest, "only response_mode=query is supported")

    scopes = value.get("scope", "").split()
    if "openid" not in scopes:
        fail(InvalidScope, "scope must contain openid")
    if state is None or len(state) < MIN_STATE_NONCE_LENGTH:
        fail(InvalidAuthorizationRequest, "state is required (at least 32 characters)")
    nonce = value.get("nonce", "")
    if len(nonce) < MIN_STATE_NONCE_LENGTH:
        fail(InvalidAuthorizationRequest, "nonce is required (at least 32 characters)")
    prompts = set(value.get("prompt", "").split())
    if not prompts <= PROMPTS:
        fail(InvalidAuthorizationRequest, "prompt may only hold login and consent")

    return AuthorizationRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        scopes=tuple(dict.fromkeys(s for s in scopes if s in SCOPE_CLAIMS)),
        acr=granted_acr(value.get("acr_values", "")),
        want_amr=_wants_amr(value.get("claims"), redirect_uri, state),
        force_login="login" in prompts,
    )


def granted_acr(acr_values: str) -> str:
    """The lowest known eIDAS level asked for; ``eidas1`` when none is known."""
    asked = [level for level in EIDAS_LEVELS if level in acr_values.split()]
    return asked[0] if asked else DEFAULT_ACR


def _wants_amr(claims: str | None, redirect_uri: str, state: str) -> bool:
    """Whether the claims parameter (OpenID Connect Core 1.0 §5.5) asks for ``amr`` in the ID
    token, as FranceConnect expects: ``{"id_token": {"amr": {"essential": true}}}``."""
    if claims is None:
        return False
    try:
        document = json.loads(claims)
    except ValueError:
        raise InvalidAuthorizationRequest(
            "claims must be a JSON object", redirect_uri, state
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("id_token", {}), dict):
        raise InvalidAuthorizationRequest("claims must be a JSON object", redirect_uri, state)
    return "amr" in document.get("id_token", {})
