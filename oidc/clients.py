"""Registered clients: the model, its validation, and the registry protocol.

A client is registered by an operator (``nicecard clients``, or the clients file loaded at
start). Its metadata follows OAuth 2.0 Dynamic Client Registration (RFC 7591 §2) and OpenID
Connect Dynamic Client Registration 1.0 §2, so that the same validation serves RFC 7591
registration later. Some fields are stored before the flows that use them exist (redirect URIs,
logout URIs, PAR and DPoP requirements).

``security_profile = "fapi2"`` puts a client under the FAPI 2.0 Security Profile (see
:class:`SecurityProfile`): registration refuses metadata that contradicts it, and the endpoints
apply its rules to that client (each names the section it implements).

:class:`Client` also answers the questions Authlib asks of a client (``ClientMixin``:
``check_redirect_uri``, ``check_grant_type``...) by duck typing, so Authlib grants can use it
as is; client authentication itself never goes through Authlib's secret check
(:meth:`Client.check_client_secret` refuses), it goes through :mod:`oidc.client_auth`.

Every process keeps the clients it used in a :class:`ClientDirectory` for a few seconds, so the
token endpoint does not read the database for each request; a change made by another process
(``rotate-secret``, ``remove``) is seen within that time.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from oidc.errors import OAuthError


class InvalidClientMetadata(OAuthError):
    """Client metadata that cannot be registered (RFC 7591 §3.2.2 ``invalid_client_metadata``)."""

    error = "invalid_client_metadata"


class InvalidRedirectUri(InvalidClientMetadata):
    """A redirect URI that cannot be registered (RFC 7591 §3.2.2 ``invalid_redirect_uri``)."""

    error = "invalid_redirect_uri"


class ClientExists(Exception):
    """A client with this ``client_id`` is already registered."""


class ClientNotFound(Exception):
    """No client with this ``client_id`` is registered."""


class AuthMethod(enum.StrEnum):
    """Token endpoint authentication methods (RFC 7591 §2, OpenID Connect Core §9)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 (a method name)
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 (a method name)
    PRIVATE_KEY_JWT = "private_key_jwt"
    NONE = "none"

    @property
    def uses_secret(self) -> bool:
        return self in (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST)

    @property
    def confidential(self) -> bool:
        return self is not AuthMethod.NONE


class SecurityProfile(enum.StrEnum):
    """Security profiles a client may be registered under (member ``security_profile``).

    No specification defines a client metadata member for this; providers choose the profile
    per client in their own way (node-oidc-provider: a ``fapi.profile`` function of the client;
    Keycloak: a client policy with the ``fapi-2-security-profile`` profile). ``fapi2`` is the
    FAPI 2.0 Security Profile (final, 2025); its Message Signing profile is not offered.
    """

    FAPI2 = "fapi2"


class GrantType(enum.StrEnum):
    AUTHORIZATION_CODE = "authorization_code"
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 (a grant name)
    CLIENT_CREDENTIALS = "client_credentials"


#: Response types a client may register (the OP implements the code flow only).
RESPONSE_TYPES = frozenset({"code"})
#: JWS algorithms for ID tokens (OpenID Connect Core §3.1.3.7: RS256 by default).
ID_TOKEN_ALGS = ("RS256", "PS256", "ES256")
#: JWS algorithms accepted for private_key_jwt assertions (never ``none``, never HMAC).
ASSERTION_ALGS = ("ES256", "PS256", "RS256")
#: FAPI 2.0 Security Profile §5.4.1: the JWS algorithms a FAPI client's tokens, assertions and
#: proofs may use (EdDSA is allowed too but not offered here; RS256 never).
FAPI2_ALGS = ("PS256", "ES256")
#: ID token algorithm of a FAPI client that registers none (access tokens are ES256 too).
FAPI2_DEFAULT_ID_TOKEN_ALG = "ES256"  # noqa: S105 (an algorithm)
#: Scopes that need a signed-in citizen: never granted to a client acting for itself.
USER_SCOPES = frozenset({"openid", "profile", "email", "address", "phone", "offline_access"})

# RFC 6749 Appendix A: client_id is *VSCHAR; scope-token is 1*NQCHAR.
_VSCHARS = re.compile(r"[\x20-\x7e]{1,255}")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def parse_scope(value: str) -> frozenset[str]:
    """A ``scope`` string (RFC 6749 §3.3: space-delimited, case-sensitive tokens) as a set.

    Raises :class:`ValueError` on a malformed token.
    """
    tokens = value.split(" ")
    if any(not _SCOPE_TOKEN.fullmatch(token) for token in tokens if token) or (
        value and not any(tokens)
    ):
        raise ValueError("scope tokens are printable ASCII without spaces, quotes or backslashes")
    return frozenset(token for token in tokens if token)


def format_scope(scopes: Iterable[str]) -> str:
    """A set of scopes as the ``scope`` string, in a stable order."""
    return " ".join(sorted(scopes))


@dataclass(frozen=True)
class Client:
    """A registered client (RFC 7591 §2 metadata; OpenID Connect Registration §2)."""

    client_id: str
    token_endpoint_auth_method: AuthMethod
    client_name: str = ""
    grant_types: frozenset[GrantType] = frozenset({GrantType.AUTHORIZATION_CODE})
    response_types: frozenset[str] = frozenset({"code"})
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    #: scopes the client may be granted
    scope: frozenset[str] = frozenset()
    #: claims the client may receive about a citizen (beyond ``sub``)
    claims: frozenset[str] = frozenset()
    #: pairwise subjects are computed per sector: this URI's host, or the redirect URIs' host
    sector_identifier_uri: str | None = None
    id_token_signed_response_alg: str = "RS256"  # noqa: S105 (an algorithm)
    #: userinfo answered as a JWT signed with this alg (OpenID Connect Core §5.3.2); None: JSON
    userinfo_signed_response_alg: str | None = None
    #: private_key_jwt: the only ``alg`` accepted for assertions (any of ASSERTION_ALGS if None)
    token_endpoint_auth_signing_alg: str | None = None
    #: private_key_jwt: the client's public keys, by value (a JWK Set) or by reference
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None
    require_pushed_authorization_requests: bool = False
    dpop_bound_access_tokens: bool = False
    #: a security profile whose rules apply to this client (FAPI 2.0), or None
    security_profile: SecurityProfile | None = None
    #: SHA-256 digest of the generated secret (client_secret_basic/post only)
    secret_hash: bytes | None = field(default=None, repr=False)
    secret_rotated_at: datetime | None = None
    #: who manages the registration: "cli" or "file" (the clients file owns its entries)
    source: str = "cli"
    created_at: datetime | None = None
    updated_at: datetime | None = None

    subject_type: ClassVar[str] = "pairwise"

    @property
    def machine_scope(self) -> frozenset[str]:
        """Scopes the client may be granted for itself (client_credentials)."""
        return self.scope - USER_SCOPES

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method is AuthMethod.NONE

    @property
    def fapi2(self) -> bool:
        """Whether the FAPI 2.0 Security Profile applies to this client."""
        return self.security_profile is SecurityProfile.FAPI2

    @property
    def requires_par(self) -> bool:
        """RFC 9126 §6 ``require_pushed_authorization_requests``; always for FAPI 2.0 clients
        (FAPI 2.0 Security Profile §5.3.2.2 items 2-3)."""
        return self.require_pushed_authorization_requests or self.fapi2

    @property
    def requires_dpop(self) -> bool:
        """RFC 9449 §5.2 ``dpop_bound_access_tokens``; always for FAPI 2.0 clients (§5.3.2.1
        items 4-5: sender-constrained access tokens, DPoP being the method offered here)."""
        return self.dpop_bound_access_tokens or self.fapi2

    def allowed_algs(self, algs: Iterable[str]) -> tuple[str, ...]:
        """``algs`` (an endpoint's allow-list for assertions or DPoP proofs) narrowed by the
        client's profile: PS256 and ES256 only for FAPI 2.0 (Security Profile §5.4.1)."""
        return tuple(alg for alg in algs if not self.fapi2 or alg in FAPI2_ALGS)

    def metadata(self) -> dict[str, Any]:
        """The registration as RFC 7591 client metadata (what ``clients show`` prints)."""
        body: dict[str, Any] = {
            "client_id": self.client_id,
            "client_name": self.client_name,
            "token_endpoint_auth_method": self.token_endpoint_auth_method.value,
            "grant_types": sorted(g.value for g in self.grant_types),
            "response_types": sorted(self.response_types),
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "backchannel_logout_uri": self.backchannel_logout_uri,
            "scope": format_scope(self.scope),
            "claims": sorted(self.claims),
            "subject_type": self.subject_type,
            "sector_identifier_uri": self.sector_identifier_uri,
            "id_token_signed_response_alg": self.id_token_signed_response_alg,
            "userinfo_signed_response_alg": self.userinfo_signed_response_alg,
            "token_endpoint_auth_signing_alg": self.token_endpoint_auth_signing_alg,
            "jwks": dict(self.jwks) if self.jwks is not None else None,
            "jwks_uri": self.jwks_uri,
            "require_pushed_authorization_requests": self.require_pushed_authorization_requests,
            "dpop_bound_access_tokens": self.dpop_bound_access_tokens,
            "security_profile": self.security_profile.value if self.security_profile else None,
        }
        return {k: v for k, v in body.items() if v not in (None, [], "")}

    # -- what Authlib's ClientMixin asks (duck-typed; RFC 6749 §2, §3.1.2) -------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        """The redirect URI may be omitted only when exactly one is registered."""
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        try:
            requested = parse_scope(scope)
        except ValueError:
            return ""
        return format_scope(requested & self.scope)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exact string comparison (RFC 9700 §4.1.3; OpenID Connect Core §3.1.2.1)."""
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        # Secrets are checked by oidc.client_auth (constant time, against the stored digest).
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method.value

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in {g.value for g in self.grant_types}


# -- validation -------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: str, name: str, *, error: type[InvalidClientMetadata]) -> str:
    """An absolute https URL (http only on loopback), without a fragment (RFC 6749 §3.1.2)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        raise error(f"{name}: not a URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise error(f"{name}: must be an absolute https URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise error(f"{name}: plain http is allowed only on loopback")
    if parts.fragment or value.endswith("#"):
        raise error(f"{name}: must not contain a fragment")
    return value


def _check_jwks(jwks: Mapping[str, Any]) -> Mapping[str, Any]:
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise InvalidClientMetadata("jwks: must be a JWK Set with at least one key")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("EC", "RSA"):
            raise InvalidClientMetadata("jwks: keys must be EC or RSA public keys")
        if _PRIVATE_JWK_MEMBERS & key.keys():
            raise InvalidClientMetadata("jwks: holds private key material; register the public key")
        if key.get("use", "sig") != "sig":
            raise InvalidClientMetadata("jwks: keys must be signing keys")
        if key.get("alg") is not None and key["alg"] not in ASSERTION_ALGS:
            raise InvalidClientMetadata(f"jwks: alg must be one of {', '.join(ASSERTION_ALGS)}")
    kids = [key.get("kid") for key in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise InvalidClientMetadata("jwks: several keys need distinct kid values")
    return jwks


def _check_grants(client: Client) -> None:
    method = client.token_endpoint_auth_method
    if not client.grant_types:
        raise InvalidClientMetadata("grant_types: at least one")
    if not client.response_types <= RESPONSE_TYPES:
        raise InvalidClientMetadata("response_types: only 'code' is supported")
    code = GrantType.AUTHORIZATION_CODE in client.grant_types
    if code != ("code" in client.response_types):
        raise InvalidClientMetadata(
            "grant_types and response_types disagree: 'authorization_code' goes with 'code'"
        )
    if GrantType.REFRESH_TOKEN in client.grant_types and not code:
        raise InvalidClientMetadata("grant_types: refresh_token needs authorization_code")
    if GrantType.CLIENT_CREDENTIALS in client.grant_types and not method.confidential:
        raise InvalidClientMetadata("grant_types: client_credentials needs a confidential client")
    if code and not client.redirect_uris:
        raise InvalidRedirectUri("redirect_uris: at least one for the authorization code grant")


def _check_uris(client: Client) -> None:
    for uri in client.redirect_uris:
        _check_url(uri, "redirect_uris", error=InvalidRedirectUri)
    for uri in client.post_logout_redirect_uris:
        _check_url(uri, "post_logout_redirect_uris", error=InvalidRedirectUri)
    if client.backchannel_logout_uri is not None:
        _check_url(
            client.backchannel_logout_uri, "backchannel_logout_uri", error=InvalidClientMetadata
        )
    if client.sector_identifier_uri is not None:
        _check_url(
            client.sector_identifier_uri, "sector_identifier_uri", error=InvalidClientMetadata
        )
        if urlsplit(client.sector_identifier_uri).scheme != "https":
            raise InvalidClientMetadata("sector_identifier_uri: must be https")
    elif GrantType.AUTHORIZATION_CODE in client.grant_types:
        hosts = {urlsplit(uri).hostname for uri in client.redirect_uris}
        if len(hosts) > 1:
            raise InvalidClientMetadata(
                "sector_identifier_uri: required when redirect URIs span several hosts"
            )


def _check_authentication(client: Client) -> None:
    method = client.token_endpoint_auth_method
    if method is AuthMethod.PRIVATE_KEY_JWT:
        if (client.jwks is None) == (client.jwks_uri is None):
            raise InvalidClientMetadata("private_key_jwt needs exactly one of jwks and jwks_uri")
        if client.jwks is not None:
            _check_jwks(client.jwks)
        if client.jwks_uri is not None:
            _check_url(client.jwks_uri, "jwks_uri", error=InvalidClientMetadata)
        alg = client.token_endpoint_auth_signing_alg
        if alg is not None and alg not in ASSERTION_ALGS:
            raise InvalidClientMetadata(
                f"token_endpoint_auth_signing_alg: one of {', '.join(ASSERTION_ALGS)}"
            )
    elif client.jwks is not None or client.jwks_uri is not None:
        raise InvalidClientMetadata("jwks and jwks_uri are only for private_key_jwt clients")
    elif client.token_endpoint_auth_signing_alg is not None:
        raise InvalidClientMetadata("token_endpoint_auth_signing_alg: only for private_key_jwt")
    if not method.uses_secret and client.secret_hash is not None:
        raise InvalidClientMetadata(f"{method} clients have no secret")


def _check_fapi2(client: Client) -> None:
    """FAPI 2.0 Security Profile (final) rules a registration can break: §5.3.2.1 items 3, 4-6
    (a confidential client authenticating with private_key_jwt, mTLS not being offered here;
    DPoP-bound tokens), §5.3.2.2 items 1-3 and 8 (the code flow through PAR, https redirect
    URIs), §5.4.1 (PS256 or ES256 for every signature)."""
    where = "security_profile fapi2"
    if client.token_endpoint_auth_method is not AuthMethod.PRIVATE_KEY_JWT:
        raise InvalidClientMetadata(
            f"{where}: token_endpoint_auth_method must be private_key_jwt "
            "(tls_client_auth is not supported)"
        )
    if not client.dpop_bound_access_tokens:
        raise InvalidClientMetadata(f"{where}: dpop_bound_access_tokens must be true")
    if (
        GrantType.AUTHORIZATION_CODE in client.grant_types
        and not client.require_pushed_authorization_requests
    ):
        raise InvalidClientMetadata(f"{where}: require_pushed_authorization_requests must be true")
    for uri in client.redirect_uris:
        if urlsplit(uri).scheme != "https":
            raise InvalidRedirectUri(f"{where}: redirect_uris must be https")
    algs = ", ".join(FAPI2_ALGS)
    for name, alg in (
        ("id_token_signed_response_alg", client.id_token_signed_response_alg),
        ("userinfo_signed_response_alg", client.userinfo_signed_response_alg),
        ("token_endpoint_auth_signing_alg", client.token_endpoint_auth_signing_alg),
    ):
        if alg is not None and alg not in FAPI2_ALGS:
            raise InvalidClientMetadata(f"{where}: {name} must be one of {algs}")
    for key in (client.jwks or {}).get("keys", ()):
        if isinstance(key, Mapping) and key.get("alg") not in (None, *FAPI2_ALGS):
            raise InvalidClientMetadata(f"{where}: jwks keys must be for {algs}")


def validate_client(client: Client) -> Client:
    """Check a registration's consistency; raise :class:`InvalidClientMetadata` naming the field.

    RFC 7591 §2 and §2.1 (grant and response types agree; ``jwks`` and ``jwks_uri`` are
    exclusive), RFC 6749 §3.1.2 (absolute redirect URIs without fragment), §2.1 and §4.4 (the
    client credentials grant is for confidential clients only), OpenID Connect Core §8.1 (a
    sector identifier when redirect URIs span several hosts), and a security profile's rules.
    Checks nothing over the network: :func:`oidc.sector.verify_sector_identifier` does.
    """
    if not _VSCHARS.fullmatch(client.client_id):
        raise InvalidClientMetadata("client_id: 1 to 255 printable ASCII characters")
    if not isinstance(client.token_endpoint_auth_method, AuthMethod):
        raise InvalidClientMetadata("token_endpoint_auth_method: not supported")
    if len(client.client_name) > 200:
        raise InvalidClientMetadata("client_name: at most 200 characters")
    if client.security_profile is not None and not isinstance(
        client.security_profile, SecurityProfile
    ):
        raise InvalidClientMetadata("security_profile: not supported")
    if client.fapi2:  # first: its reasons say more than the general rules' would
        _check_fapi2(client)
    _check_grants(client)
    _check_uris(client)
    _check_authentication(client)
    for scope in client.scope:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise InvalidClientMetadata(f"scope: malformed token {scope!r}")
    for claim in client.claims:
        if not _CLAIM_NAME.fullmatch(claim):
            raise InvalidClientMetadata(f"claims: malformed claim name {claim!r}")
    if (
        client.userinfo_signed_response_alg is not None
        and client.userinfo_signed_response_alg not in ID_TOKEN_ALGS
    ):
        raise InvalidClientMetadata(
            f"userinfo_signed_response_alg: one of {', '.join(ID_TOKEN_ALGS)}"
        )
    if client.id_token_signed_response_alg not in ID_TOKEN_ALGS:
        raise InvalidClientMetadata(
            f"id_token_signed_response_alg: one of {', '.join(ID_TOKEN_ALGS)}"
        )
    return client


def client_from_metadata(data: Mapping[str, Any], *, source: str = "cli") -> Client:
    """A validated :class:`Client` from RFC 7591 metadata (a clients file entry, a registration
    request). Unknown members are refused: a typo must not pass silently.

    With ``security_profile = "fapi2"``, members left out take the profile's values
    (``private_key_jwt``, ``require_pushed_authorization_requests``, ``dpop_bound_access_tokens``,
    an ES256 ID token); members given must agree with it (:func:`validate_client`)."""
    known = {f.name for f in dataclasses.fields(Client)} - {
        "secret_hash",
        "secret_rotated_at",
        "source",
        "created_at",
        "updated_at",
    }
    unknown = set(data) - known - {"subject_type"}
    if unknown:
        raise InvalidClientMetadata(f"unknown client metadata: {', '.join(sorted(unknown))}")
    if data.get("subject_type", "pairwise") != "pairwise":
        raise InvalidClientMetadata("subject_type: only 'pairwise' is supported")

    def strings(name: str) -> tuple[str, ...]:
        value = data.get(name, ())
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise InvalidClientMetadata(f"{name}: a list of strings")
        return tuple(value)

    def optional_str(name: str) -> str | None:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidClientMetadata(f"{name}: a string")
        return value

    def flag(name: str) -> bool:
        value = data.get(name, False)
        if not isinstance(value, bool):
            raise InvalidClientMetadata(f"{name}: true or false")
        return value

    client_id = data.get("client_id")
    if not isinstance(client_id, str):
        raise InvalidClientMetadata("client_id: required")
    profile_name = optional_str("security_profile")
    try:
        profile = SecurityProfile(profile_name) if profile_name is not None else None
    except ValueError:
        raise InvalidClientMetadata(
            f"security_profile: one of {', '.join(p.value for p in SecurityProfile)}"
        ) from None
    if profile is SecurityProfile.FAPI2:
        data = {
            "token_endpoint_auth_method": AuthMethod.PRIVATE_KEY_JWT.value,
            "require_pushed_authorization_requests": True,
            "dpop_bound_access_tokens": True,
            "id_token_signed_response_alg": FAPI2_DEFAULT_ID_TOKEN_ALG,
            **data,
        }
    try:
        method = AuthMethod(data.get("token_endpoint_auth_method", "client_secret_basic"))
        grants = frozenset(GrantType(g) for g in strings("grant_types") or ("authorization_code",))
    except ValueError as exc:
        raise InvalidClientMetadata(str(exc)) from None
    scope_value = data.get("scope", "")
    if not isinstance(scope_value, str):
        raise InvalidClientMetadata("scope: a space-separated string")
    try:
        scope = parse_scope(scope_value)
    except ValueError as exc:
        raise InvalidClientMetadata(f"scope: {exc}") from None
    jwks = data.get("jwks")
    if jwks is not None and not isinstance(jwks, Mapping):
        raise InvalidClientMetadata("jwks: a JWK Set object")
    default_response_types = ("code",) if GrantType.AUTHORIZATION_CODE in grants else ()
    client = Client(
        client_id=client_id,
        token_endpoint_auth_method=method,
        client_name=optional_str("client_name") or "",
        grant_types=grants,
        response_types=frozenset(strings("response_types") or default_response_types),
        redirect_uris=strings("redirect_uris"),
        post_logout_redirect_uris=strings("post_logout_redirect_uris"),
        backchannel_logout_uri=optional_str("backchannel_logout_uri"),
        scope=scope,
        claims=frozenset(strings("claims")),
        sector_identifier_uri=optional_str("sector_identifier_uri"),
        id_token_signed_response_alg=optional_str("id_token_signed_response_alg") or "RS256",
        userinfo_signed_response_alg=optional_str("userinfo_signed_response_alg"),
        token_endpoint_auth_signing_alg=optional_str("token_endpoint_auth_signing_alg"),
        jwks=dict(jwks) if jwks is not None else None,
        jwks_uri=optional_str("jwks_uri"),
        require_pushed_authorization_requests=flag("require_pushed_authorization_requests"),
        dpop_bound_access_tokens=flag("dpop_bound_access_tokens"),
        security_profile=profile,
        source=source,
    )
    return validate_client(client)


# -- the registry -----------------------------------------------------------------------------


class ClientRegistry(Protocol):
    """Where registrations are kept (the identity database: :class:`oidc.tables.SqlClientRegistry`).

    Synchronous: callers on the event loop go through :class:`ClientDirectory`.
    """

    def get(self, client_id: str) -> Client | None:
        """The client, or None if none is registered under this id."""

    def all_clients(self) -> list[Client]:
        """Every client, ordered by client_id."""

    def add(self, client: Client) -> None:
        """Register a new client; :class:`ClientExists` if the id is taken."""

    def update(self, client: Client) -> None:
        """Replace a client's metadata (and secret digest); :class:`ClientNotFound` if absent."""

    def remove(self, client_id: str) -> None:
        """Delete a registration; :class:`ClientNotFound` if absent."""

    def sync_file_clients(self, clients: Sequence[Client]) -> None:
        """Make the clients whose source is the clients file exactly ``clients`` (keeping the
        secret digests of those already registered), in one transaction."""


Offload = Callable[[Callable[[str], Client | None], str], Awaitable[Client | None]]


class ClientDirectory:
    """Clients by id for the request path: a per-process cache in front of a registry.

    An entry lives ``ttl`` seconds, so a secret rotation or a removal made elsewhere takes
    effect within that time. Unknown ids are not cached (the cache cannot be filled by
    guessing), and at most ``max_entries`` clients are kept.
    """

    def __init__(
        self,
        registry: ClientRegistry,
        offload: Offload,
        *,
        ttl: float = 5.0,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._offload = offload
        self._ttl = ttl
        self._max = max_entries
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Client]] = OrderedDict()

    @property
    def registry(self) -> ClientRegistry:
        return self._registry

    def cached(self, client_id: str) -> Client | None:
        """The cached client if it is still fresh (no I/O; safe on the event loop)."""
        entry = self._entries.get(client_id)
        if entry is None or entry[0] <= self._monotonic():
            return None
        return entry[1]

    async def get(self, client_id: str) -> Client | None:
        client = self.cached(client_id)
        if client is not None:
            return client
        client = await self._offload(self._registry.get, client_id)
        if client is not None and self._ttl > 0:
            with self._lock:
                self._entries[client_id] = (self._monotonic() + self._ttl, client)
                self._entries.move_to_end(client_id)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        return client

    def forget(self, client_id: str | None = None) -> None:
        """Drop one cached client (or all): the next lookup reads the registry."""
        with self._lock:
            if client_id is None:
                self._entries.clear()
            else:
                self._entries.pop(client_id, None)
