"""Pending sign-ins and login sessions, kept server-side.

A pending sign-in is keyed by SHA-256 of its ``state`` and bound to the browser by SHA-256 of a
cookie set when it began; it is consumed once. A login session is keyed by SHA-256 of its cookie
value; FranceConnect's claims and id_token live in it sealed (``identity.sealing``) and expire
with it. Nothing here stores FranceConnect's ``sub`` or a claim in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from identity import accounts
from identity.errors import SignInExpired
from identity.franceconnect.client import Identity
from identity.sealing import seal, unseal
from identity.tables import Account, LoginSession, SigninAttempt
from keys.keyring import Keyring

SIGNIN_TTL = timedelta(minutes=10)


def _h(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PendingSignIn:
    nonce: str
    return_to: str


@dataclass(frozen=True)
class CitizenSession:
    account_id: str
    ledger_pseudonym: str
    sid: str
    auth_time: datetime
    acr: str
    amr: tuple[str, ...]
    claims: dict[str, Any]
    fc_id_token: str


def begin(
    session: Session, keyring: Keyring, browser: str, return_to: str, now: datetime
) -> tuple[str, str]:
    """A new ``(state, nonce)``, each 64 hex characters from the CSPRNG, bound to ``browser``."""
    state, nonce = secrets.token_hex(32), secrets.token_hex(32)
    state_hash = _h(state)
    sealed, kid = seal(keyring, {"nonce": nonce, "return_to": return_to}, state_hash)
    session.execute(sa.delete(SigninAttempt).where(SigninAttempt.expires_at < now))  # type: ignore[arg-type]
    session.add(
        SigninAttempt(
            state_hash=state_hash,
            browser_hash=_h(browser),
            created_at=now,
            expires_at=now + SIGNIN_TTL,
            sealed=sealed,
            sealed_kid=kid,
        )
    )
    session.commit()
    return state, nonce


def consume(
    session: Session, keyring: Keyring, state: str, browser: str | None, now: datetime
) -> PendingSignIn:
    """The pending sign-in for ``state``, removed so it cannot be replayed."""
    state_hash = _h(state)
    attempt = session.get(SigninAttempt, state_hash)
    if attempt is None:
        raise SignInExpired("no pending sign-in for this state")
    deleted = session.execute(
        sa.delete(SigninAttempt).where(SigninAttempt.state_hash == state_hash)  # type: ignore[arg-type]
    )
    session.commit()
    if deleted.rowcount != 1:  # type: ignore[attr-defined]
        raise SignInExpired("this sign-in was already completed")
    if browser is None or not hmac.compare_digest(attempt.browser_hash, _h(browser)):
        raise SignInExpired("this sign-in began in another browser")
    if _aware(attempt.expires_at) < now:
        raise SignInExpired("this sign-in has expired")
    data = unseal(keyring, attempt.sealed, attempt.sealed_kid, state_hash)
    return PendingSignIn(nonce=data["nonce"], return_to=data["return_to"])


def open_session(
    session: Session, keyring: Keyring, identity: Identity, now: datetime, ttl: timedelta
) -> str:
    """Find or create the account and open a login session; returns the cookie value."""
    account = accounts.find_or_create(session, keyring, identity.sub, now)
    cookie = secrets.token_urlsafe(32)
    id_hash = _h(cookie)
    sealed, kid = seal(
        keyring, {"claims": dict(identity.claims), "id_token": identity.id_token}, id_hash
    )
    session.execute(sa.delete(LoginSession).where(LoginSession.expires_at < now))  # type: ignore[arg-type]
    session.add(
        LoginSession(
            id_hash=id_hash,
            account_id=account.id,
            sid=secrets.token_hex(16),
            created_at=now,
            auth_time=now,
            expires_at=now + ttl,
            acr=identity.acr,
            amr="fc",
            sealed=sealed,
            sealed_kid=kid,
        )
    )
    session.commit()
    return cookie


def load_session(
    session: Session, keyring: Keyring, cookie: str | None, now: datetime
) -> CitizenSession | None:
    if not cookie:
        return None
    id_hash = _h(cookie)
    row = session.get(LoginSession, id_hash)
    if row is None or _aware(row.expires_at) <= now:
        return None
    account = session.get(Account, row.account_id)
    if account is None:
        return None
    try:
        data = unseal(keyring, row.sealed, row.sealed_kid, id_hash)
    except SignInExpired:
        return None
    return CitizenSession(
        account_id=row.account_id,
        ledger_pseudonym=account.ledger_pseudonym,
        sid=row.sid,
        auth_time=_aware(row.auth_time),
        acr=row.acr,
        amr=tuple(row.amr.split()),
        claims=data["claims"],
        fc_id_token=data["id_token"],
    )


def end_session(session: Session, cookie: str | None) -> None:
    if cookie:
        session.execute(sa.delete(LoginSession).where(LoginSession.id_hash == _h(cookie)))  # type: ignore[arg-type]
        session.commit()
