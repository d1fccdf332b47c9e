"""Which claims a relying party receives about a citizen, and derived claims.

Three filters, in order: the scopes and ``claims`` request parameter say what the RP asks for
(OpenID Connect Core §5.4, §5.5); the client's registration says what it is entitled to (a
public service may be entitled to FranceConnect's identity claims, a private service by default
only to ``sub``); the citizen's consent covers what is released. Derived claims
(``age_over_18``, ``age_bracket``) are computed from the birthdate at issuance, so an RP can
learn that a citizen is an adult without learning when they were born.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from oidc.errors import InvalidRequest

#: Standard scopes (OpenID Connect Core §5.4) and ours, with the claims each asks for.
SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "profile": ("given_name", "family_name", "preferred_username", "gender", "birthdate"),
    "email": ("email",),
    "birth": ("birthplace", "birthcountry"),
    "age": ("age_over_18", "age_bracket"),
}
#: Every claim the provider can release (besides ``sub``).
SUPPORTED_CLAIMS = tuple(sorted({c for claims in SCOPE_CLAIMS.values() for c in claims}))
#: (lowest age, label) from the oldest bracket down.
AGE_BRACKETS = ((65, "65+"), (26, "26-64"), (15, "15-25"), (0, "0-14"))


@dataclass(frozen=True)
class ClaimsRequest:
    """The ``claims`` request parameter (§5.5): claim name → essential, per target."""

    userinfo: Mapping[str, bool]
    id_token: Mapping[str, bool]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.userinfo) | frozenset(self.id_token)

    @property
    def essential(self) -> frozenset[str]:
        return frozenset(
            name for part in (self.userinfo, self.id_token) for name, e in part.items() if e
        )

    def to_json(self) -> str:
        return json.dumps({"userinfo": dict(self.userinfo), "id_token": dict(self.id_token)})


EMPTY_CLAIMS_REQUEST = ClaimsRequest({}, {})


def parse_claims_request(value: str | None) -> ClaimsRequest:
    """Parse §5.5's JSON object; unknown claims are kept (ignored later), malformed is an error."""
    if not value:
        return EMPTY_CLAIMS_REQUEST
    try:
        data = json.loads(value)
    except ValueError:
        raise InvalidRequest("claims: not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("claims: must be a JSON object")
    parts: dict[str, dict[str, bool]] = {}
    for target in ("userinfo", "id_token"):
        members = data.get(target) or {}
        if not isinstance(members, dict):
            raise InvalidRequest(f"claims: {target} must be an object")
        parsed: dict[str, bool] = {}
        for name, spec in members.items():
            if spec is not None and not isinstance(spec, dict):
                raise InvalidRequest(f"claims: {target}.{name} must be null or an object")
            parsed[str(name)] = bool(spec and spec.get("essential") is True)
        parts[target] = parsed
    return ClaimsRequest(parts["userinfo"], parts["id_token"])


def requested_claims(scopes: Iterable[str], request: ClaimsRequest) -> frozenset[str]:
    names = {c for scope in scopes for c in SCOPE_CLAIMS.get(scope, ())}
    return frozenset((names | request.names) & set(SUPPORTED_CLAIMS))


def birthdate_of(value: object) -> date | None:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def age_on(birthdate: date, today: date) -> int:
    before_birthday = (today.month, today.day) < (birthdate.month, birthdate.day)
    return today.year - birthdate.year - int(before_birthday)


def derived_claims(source: Mapping[str, Any], today: date) -> dict[str, Any]:
    born = birthdate_of(source.get("birthdate"))
    if born is None:
        return {}
    age = age_on(born, today)
    bracket = next(label for lowest, label in AGE_BRACKETS if age >= lowest)
    return {"age_over_18": age >= 18, "age_bracket": bracket}


def release(source: Mapping[str, Any], names: Iterable[str], today: date) -> dict[str, Any]:
    """The values of ``names`` from FranceConnect's claims and the derived ones; a claim the
    citizen's identity lacks (no email, say) is simply absent (§5.3.2)."""
    available = {
        **{k: v for k, v in source.items() if v not in (None, "")},
        **derived_claims(source, today),
    }
    return {name: available[name] for name in names if name in available}
