"""Provider metadata (OpenID Connect Discovery 1.0 §3; RFC 8414 §2), built from what is enabled.

One function, :func:`provider_metadata`, turns a :class:`ProviderFeatures` into the document
served at ``/.well-known/openid-configuration``. It states only what the service does: an
endpoint appears when it is mounted, an authentication method when a grant accepts it. The
authorization endpoint, userinfo, ID token and logout metadata are added by the features that
provide them (through ``extra`` until they get fields of their own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oidc.clients import ASSERTION_ALGS, AuthMethod
from oidc.jwks import JWKS_PATH

DISCOVERY_PATH = "/.well-known/openid-configuration"
TOKEN_PATH = "/token"  # noqa: S105 (a path)
INTROSPECTION_PATH = "/introspect"
REVOCATION_PATH = "/revoke"


@dataclass(frozen=True)
class ProviderFeatures:
    """What the provider offers; paths are relative to the issuer."""

    issuer: str
    jwks_path: str = JWKS_PATH
    token_path: str | None = TOKEN_PATH
    introspection_path: str | None = INTROSPECTION_PATH
    revocation_path: str | None = REVOCATION_PATH
    grant_types: Sequence[str] = ("client_credentials",)
    response_types: Sequence[str] = ()
    token_endpoint_auth_methods: Sequence[AuthMethod] = (
        AuthMethod.CLIENT_SECRET_BASIC,
        AuthMethod.CLIENT_SECRET_POST,
        AuthMethod.PRIVATE_KEY_JWT,
    )
    assertion_signing_algs: Sequence[str] = ASSERTION_ALGS
    scopes: Sequence[str] = ()
    #: further members, e.g. ``authorization_endpoint`` once the code flow is mounted
    extra: Mapping[str, Any] = field(default_factory=dict)


def _auth(
    metadata: dict[str, Any], prefix: str, methods: Sequence[AuthMethod], algs: Sequence[str]
) -> None:
    metadata[f"{prefix}_auth_methods_supported"] = [m.value for m in methods]
    if AuthMethod.PRIVATE_KEY_JWT in methods:
        metadata[f"{prefix}_auth_signing_alg_values_supported"] = list(algs)


def provider_metadata(features: ProviderFeatures) -> dict[str, Any]:
    """The discovery document; ``issuer`` is exactly the configured issuer (Discovery §4.3)."""
    base = features.issuer
    metadata: dict[str, Any] = {
        "issuer": base,
        "jwks_uri": base + features.jwks_path,
    }
    methods = list(features.token_endpoint_auth_methods)
    if features.token_path is not None:
        metadata["token_endpoint"] = base + features.token_path
        _auth(metadata, "token_endpoint", methods, features.assertion_signing_algs)
    metadata["grant_types_supported"] = list(features.grant_types)
    metadata["response_types_supported"] = list(features.response_types)
    if features.scopes:
        metadata["scopes_supported"] = list(features.scopes)
    if features.introspection_path is not None:
        metadata["introspection_endpoint"] = base + features.introspection_path
        confidential = [m for m in methods if m.confidential]
        _auth(metadata, "introspection_endpoint", confidential, features.assertion_signing_algs)
    if features.revocation_path is not None:
        metadata["revocation_endpoint"] = base + features.revocation_path
        _auth(metadata, "revocation_endpoint", methods, features.assertion_signing_algs)
    metadata.update(features.extra)
    return metadata
