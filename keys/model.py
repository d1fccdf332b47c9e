"""What a key is: its purpose, its lifecycle state and the record kept of it.

A key moves one way only: ``next → active → retired → destroyed``. A ``next`` key is already
published (so relying parties cache it before it signs); the ``active`` key signs; ``retired`` keys
still verify for the configured overlap; ``destroyed`` keys keep only their public half and kid.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime


class Algorithm(enum.StrEnum):
    """The algorithm a key is bound to (JOSE names where JOSE has one)."""

    RS256 = "RS256"
    PS256 = "PS256"
    ES256 = "ES256"
    ED25519 = "Ed25519"
    HMAC_SHA256 = "HMAC-SHA256"
    A256GCM = "A256GCM"
    RSABSSA_SHA384 = "RSABSSA-SHA384-PSS-Randomized"


@dataclasses.dataclass(frozen=True)
class PurposeSpec:
    algorithm: Algorithm
    #: published in the OpenID Provider's JWKS
    jwks: bool
    #: rotating changes what the key derives (pairwise subjects): refused unless forced
    stable: bool = False


class Purpose(enum.StrEnum):
    """What a key is for. One algorithm per purpose; one active key per purpose."""

    OIDC_RS256 = "oidc-rs256"
    OIDC_PS256 = "oidc-ps256"
    OIDC_ES256 = "oidc-es256"
    LEDGER_CHECKPOINT = "ledger-checkpoint"
    ACCOUNT_LOOKUP = "account-lookup"
    PAIRWISE_SUBJECT = "pairwise-subject"
    SESSION_SEAL = "session-seal"
    FC_CLIENT = "fc-client"

    @property
    def spec(self) -> PurposeSpec:
        return _SPECS[self]

    @property
    def algorithm(self) -> Algorithm:
        return _SPECS[self].algorithm

    @property
    def is_secret(self) -> bool:
        return _SPECS[self].algorithm in (Algorithm.HMAC_SHA256, Algorithm.A256GCM)


_SPECS: dict[Purpose, PurposeSpec] = {
    Purpose.OIDC_RS256: PurposeSpec(Algorithm.RS256, jwks=True),
    Purpose.OIDC_PS256: PurposeSpec(Algorithm.PS256, jwks=True),
    Purpose.OIDC_ES256: PurposeSpec(Algorithm.ES256, jwks=True),
    Purpose.LEDGER_CHECKPOINT: PurposeSpec(Algorithm.ED25519, jwks=False),
    Purpose.ACCOUNT_LOOKUP: PurposeSpec(Algorithm.HMAC_SHA256, jwks=False),
    Purpose.PAIRWISE_SUBJECT: PurposeSpec(Algorithm.HMAC_SHA256, jwks=False, stable=True),
    Purpose.SESSION_SEAL: PurposeSpec(Algorithm.A256GCM, jwks=False),
    Purpose.FC_CLIENT: PurposeSpec(Algorithm.ES256, jwks=False),
}


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRED = "retired"
    DESTROYED = "destroyed"


#: The only transitions the lifecycle allows.
TRANSITIONS: dict[KeyState, KeyState] = {
    KeyState.NEXT: KeyState.ACTIVE,
    KeyState.ACTIVE: KeyState.RETIRED,
    KeyState.RETIRED: KeyState.DESTROYED,
}


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """What the store keeps of one key. ``sealed`` is the encrypted private half (None once
    destroyed); ``public`` is the SubjectPublicKeyInfo DER (or raw Ed25519 key), empty for secrets.
    """

    kid: str
    purpose: Purpose
    state: KeyState
    created_at: datetime
    public: bytes
    sealed: bytes | None
    activated_at: datetime | None = None
    retired_at: datetime | None = None
    destroyed_at: datetime | None = None

    @property
    def algorithm(self) -> Algorithm:
        return self.purpose.algorithm

    def moved_to(self, state: KeyState, at: datetime) -> KeyRecord:
        """The record after one lifecycle step (the caller checked it is allowed)."""
        changes: dict[str, object] = {"state": state}
        if state is KeyState.ACTIVE:
            changes["activated_at"] = at
        elif state is KeyState.RETIRED:
            changes["retired_at"] = at
        elif state is KeyState.DESTROYED:
            changes["destroyed_at"] = at
            changes["sealed"] = None
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
