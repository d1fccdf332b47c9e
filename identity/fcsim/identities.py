"""Test identities, the claims FranceConnect releases for a scope, and the pairwise ``sub``.

Claims follow FranceConnect v2 (documentation, *Fournisseur de service › Documentation technique
› Scopes et claims*, "Liste des claims" and "Correspondance entre scope et claims"):

- ``given_name``: every given name, separated by spaces; ``family_name``: the birth name;
  ``preferred_username``: the usage name, when the identity provider knows one.
- ``gender``: ``male`` or ``female`` — the only two values FranceConnect documents.
- ``birthdate``: ``YYYY-MM-DD``. A *presumed* date (an unknown day or month, sent by the identity
  provider as ``00``) is padded with ``01``: ``1992-11-00`` → ``1992-11-01`` ("présumé jours"),
  ``1958-00-00`` → ``1958-01-01`` ("présumé mois").
- ``birthplace``: the 5-character INSEE COG code of the birth municipality (``2A``/``2B`` for
  Corsica), or the empty string for someone born abroad; ``birthcountry``: the INSEE country
  code, ``99100`` for France.

The ``sub`` is pairwise (OpenID Connect Core 1.0 §8.1): 64 hex characters then ``v1``, 66 in all
(documentation: "66 caractères"). FranceConnect derives it from a hash of the pivot identity and
the service provider's id ("Gestion des subject identifiers", FranceConnect core README), so the
same person gets the same ``sub`` at one service whatever identity provider they use, and a
different one at every other service. The simulator computes::

    identity_hash = SHA-256(canonical JSON of the six pivot-identity claims)       (hex)
    sub = HMAC-SHA-256(key=sub_secret, len‖client_id ‖ len‖identity_hash) (hex) + "v1"
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from identity.fcsim.errors import SimulatorConfigError

#: The six claims of the "identité pivot".
PIVOT_CLAIMS = ("given_name", "family_name", "birthdate", "gender", "birthplace", "birthcountry")

#: Every identity claim FranceConnect v2 releases to a service provider.
IDENTITY_CLAIMS = (*PIVOT_CLAIMS, "email", "preferred_username")

#: Scope → claims ("Correspondance entre scope et claims"); ``openid`` gives ``sub`` only.
SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "openid": (),
    "given_name": ("given_name",),
    "family_name": ("family_name",),
    "birthdate": ("birthdate",),
    "gender": ("gender",),
    "birthplace": ("birthplace",),
    "birthcountry": ("birthcountry",),
    "email": ("email",),
    "preferred_username": ("preferred_username",),
    "profile": ("family_name", "given_name", "preferred_username", "gender", "birthdate"),
    "birth": ("birthplace", "birthcountry"),
    "identite_pivot": PIVOT_CLAIMS,
}

GENDERS = ("male", "female")
SUB_VERSION = "v1"

_RAW_BIRTHDATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_BIRTHPLACE = re.compile(r"^(?:[0-8][0-9AB]|9[0-8AB])[0-9]{3}$")
_COUNTRY = re.compile(r"^99[0-9]{3}$")
FRANCE = "99100"


class Scenario(enum.StrEnum):
    """What a test identity makes the simulator do besides an ordinary sign-in."""

    NORMAL = "normal"
    #: the citizen gives up at the identity provider: ``error=access_denied``
    CANCEL = "cancel"
    #: the UserInfo endpoint answers 500
    USERINFO_500 = "userinfo-500"
    #: the UserInfo endpoint answers 200 with a body that is not a valid JWT
    USERINFO_MALFORMED = "userinfo-malformed"
    #: the UserInfo endpoint answers after ``slow_seconds``
    SLOW = "slow"


@dataclass(frozen=True)
class TestIdentity:
    """One fictitious citizen: what the tester types, and what the identity provider sends."""

    __test__ = False  # not a pytest class, whatever its name

    login: str
    password: str
    description_fr: str
    description_en: str
    #: claims as the identity provider sends them (birthdate may be presumed: ``1992-11-00``)
    raw_claims: Mapping[str, str]
    scenario: Scenario = Scenario.NORMAL
    #: authentication methods (RFC 8176), sent in the ID token only when the client asks
    amr: tuple[str, ...] = ("pwd",)
    claims: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        normalized = dict(self.raw_claims)
        if "birthdate" in normalized:
            normalized["birthdate"] = normalize_birthdate(normalized["birthdate"])
        object.__setattr__(self, "claims", normalized)

    def released(self, scopes: Iterable[str]) -> dict[str, str]:
        """The claims the granted scopes entitle the client to (absent claims stay absent)."""
        names = {name for scope in scopes for name in SCOPE_CLAIMS.get(scope, ())}
        return {
            name: self.claims[name]
            for name in IDENTITY_CLAIMS
            if name in names and name in self.claims
        }

    def identity_hash(self) -> str:
        pivot = {name: self.claims[name] for name in PIVOT_CLAIMS}
        canonical = json.dumps(pivot, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def normalize_birthdate(raw: str) -> str:
    """FranceConnect's ``birthdate`` from the identity provider's value, padding presumed parts.

    >>> normalize_birthdate("1992-11-00"), normalize_birthdate("1958-00-00")
    ('1992-11-01', '1958-01-01')
    """
    match = _RAW_BIRTHDATE.match(raw)
    if not match:
        raise ValueError("birthdate must look like YYYY-MM-DD")
    year, month, day = match.groups()
    if month == "00":
        return f"{year}-01-01"
    if day == "00":
        return f"{year}-{month}-01"
    return raw


def pairwise_sub(sub_secret: bytes, client_id: str, identity: TestIdentity) -> str:
    """The 66-character pairwise ``sub`` of ``identity`` at service provider ``client_id``."""
    message = _length_prefixed(client_id.encode("utf-8"), identity.identity_hash().encode("ascii"))
    return hmac.new(sub_secret, message, hashlib.sha256).hexdigest() + SUB_VERSION


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


# -- fixtures -----------------------------------------------------------------------------------


def load_identities(text: str | None = None) -> dict[str, TestIdentity]:
    """The test identities by login, from ``identities.json`` (or ``text``), checked."""
    if text is None:
        text = resources.files("identity.fcsim").joinpath("identities.json").read_text("utf-8")
    try:
        document = json.loads(text)
        identities = [_identity(entry) for entry in document["identities"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SimulatorConfigError(f"identities.json is invalid: {exc}") from None
    by_login = {identity.login: identity for identity in identities}
    if len(by_login) != len(identities):
        raise SimulatorConfigError("identities.json: logins must be unique")
    return by_login


def _identity(entry: Mapping[str, Any]) -> TestIdentity:
    claims = {str(k): str(v) for k, v in entry["claims"].items()}
    unknown = set(claims) - set(IDENTITY_CLAIMS)
    missing = set(PIVOT_CLAIMS) - set(claims)
    login = str(entry["login"])
    if unknown or missing:
        raise ValueError(f"{login}: unknown claims {sorted(unknown)}, missing {sorted(missing)}")
    if claims["gender"] not in GENDERS:
        raise ValueError(f"{login}: gender must be male or female")
    country, place = claims["birthcountry"], claims["birthplace"]
    if not _COUNTRY.match(country):
        raise ValueError(f"{login}: birthcountry must be an INSEE country code")
    if (country == FRANCE) != bool(_BIRTHPLACE.match(place)) or (country != FRANCE and place):
        raise ValueError(f"{login}: birthplace must be a COG code in France, empty abroad")
    return TestIdentity(
        login=login,
        password=str(entry["password"]),
        description_fr=str(entry["description"]["fr"]),
        description_en=str(entry["description"]["en"]),
        raw_claims=claims,
        scenario=Scenario(entry.get("scenario", Scenario.NORMAL)),
        amr=tuple(entry.get("amr", ("pwd",))),
    )
