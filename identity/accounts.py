"""Citizens' accounts, found by HMAC-SHA-256(account-lookup secret, FranceConnect ``sub``).

The ``sub`` itself is never stored. Every non-destroyed lookup secret is tried, active first; an
account found under an older secret is re-keyed to the active one, so that secret can rotate.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from identity.tables import Account
from keys.keyring import Keyring
from keys.model import Purpose


def fc_sub_hash(secret: bytes, fc_sub: str) -> bytes:
    return hmac.new(
        secret, b"franceconnect-sub\x00" + fc_sub.encode("utf-8"), hashlib.sha256
    ).digest()


def find_or_create(session: Session, keyring: Keyring, fc_sub: str, now: datetime) -> Account:
    """The account of this FranceConnect identity, created on first sign-in. Commits."""
    candidates = keyring.secrets(Purpose.ACCOUNT_LOOKUP)
    active_kid, active_secret = candidates[0]
    active_hash = fc_sub_hash(active_secret, fc_sub)
    for kid, secret in candidates:
        digest = fc_sub_hash(secret, fc_sub)
        account = session.exec(select(Account).where(Account.fc_sub_hash == digest)).first()
        if account is not None:
            if kid != active_kid:
                account.fc_sub_hash, account.fc_sub_kid = active_hash, active_kid
            account.last_login_at = now
            session.add(account)
            session.commit()
            return account
    account = Account(
        id=secrets.token_hex(16),
        fc_sub_hash=active_hash,
        fc_sub_kid=active_kid,
        ledger_pseudonym=secrets.token_hex(16),
        created_at=now,
        last_login_at=now,
    )
    session.add(account)
    try:
        session.commit()
    except IntegrityError:
        # The same citizen signed in twice at once: the other request created it.
        session.rollback()
        return session.exec(select(Account).where(Account.fc_sub_hash == active_hash)).one()
    return account


def delete(session: Session, account_id: str) -> None:
    """Erase an account; its sessions go with it, and the link to its ledger pseudonym."""
    session.execute(sa.delete(Account).where(Account.id == account_id))  # type: ignore[arg-type]
    session.commit()
