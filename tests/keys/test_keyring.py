"""Keyring lifecycle with an injected clock, on both stores."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from identity import migrate
from identity.db import create_engine
from keys.envelope import KeyEncryptionKey
from keys.errors import KeyDecryptionError, KeyNotFound, KeyStateError, KeyStoreError
from keys.keyring import Keyring, RotationPolicy
from keys.model import KeyState, Purpose
from keys.store import DirectoryKeyStore, KeyStore, SqlKeyStore
from tests.conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _sql_store(tmp_path: Path) -> KeyStore:
    settings = make_settings(tmp_path)
    engine = create_engine(settings.identity_url, settings)
    migrate.upgrade(migrate.Store.IDENTITY, engine)
    return SqlKeyStore(engine)


def _dir_store(tmp_path: Path) -> KeyStore:
    return DirectoryKeyStore(tmp_path / "keys")


STORES: list[Callable[[Path], KeyStore]] = [_sql_store, _dir_store]


@pytest.fixture(params=STORES, ids=["database", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    factory: Callable[[Path], KeyStore] = request.param
    return factory(tmp_path)


KEK = KeyEncryptionKey(os.urandom(32))


def test_ensure_creates_active_and_next_once(store: KeyStore) -> None:
    ring = Keyring(store, KEK, clock=Clock())
    created = ring.ensure([Purpose.OIDC_ES256])
    assert sorted(r.state for r in created) == [KeyState.ACTIVE, KeyState.NEXT]
    assert ring.ensure([Purpose.OIDC_ES256]) == []
    again = Keyring(store, KEK)
    again.reload()
    assert {r.kid for r in again.records()} == {r.kid for r in created}


def test_sign_with_active_verify_with_retired_until_overlap(store: KeyStore) -> None:
    clock = Clock()
    ring = Keyring(store, KEK, RotationPolicy(overlap=timedelta(hours=2)), clock=clock)
    ring.ensure([Purpose.OIDC_ES256])
    kid_before, key_before = ring.signing_key(Purpose.OIDC_ES256)
    published_next = ring._in_state(Purpose.OIDC_ES256, KeyState.NEXT)
    assert published_next is not None
    assert published_next.kid in {k["kid"] for k in ring.jwks()["keys"]}

    token = jwt.encode({"sub": "x"}, key_before, algorithm="ES256", headers={"kid": kid_before})

    clock.advance(timedelta(minutes=5))
    new_active = ring.rotate(Purpose.OIDC_ES256)
    # The key that signs now was published before it signed.
    assert new_active.kid == published_next.kid
    assert ring.signing_key(Purpose.OIDC_ES256)[0] == published_next.kid
    assert ring.get(kid_before).state is KeyState.RETIRED

    # The retired key still verifies what it signed, within the overlap.
    _record, public = ring.public_key(kid_before)
    assert jwt.decode(token, public, algorithms=["ES256"])["sub"] == "x"  # type: ignore[arg-type]
    assert kid_before in {k["kid"] for k in ring.jwks()["keys"]}

    clock.advance(timedelta(hours=1))
    assert ring.prune() == []
    clock.advance(timedelta(hours=1))
    destroyed = ring.prune()
    assert [r.kid for r in destroyed] == [kid_before]
    with pytest.raises(KeyNotFound):
        ring.public_key(kid_before)
    assert kid_before not in {k["kid"] for k in ring.jwks()["keys"]}

    # Another process sees the same states after reload; the private half is gone from storage.
    other = Keyring(store, KEK)
    other.reload()
    assert other.get(kid_before).state is KeyState.DESTROYED
    assert other.get(kid_before).sealed is None


def test_lifecycle_only_moves_forward(store: KeyStore) -> None:
    ring = Keyring(store, KEK, clock=Clock())
    ring.ensure([Purpose.LEDGER_CHECKPOINT])
    active = ring.active(Purpose.LEDGER_CHECKPOINT)
    nxt = ring._in_state(Purpose.LEDGER_CHECKPOINT, KeyState.NEXT)
    assert nxt is not None
    with pytest.raises(KeyStateError):
        ring.retire(nxt.kid)
    with pytest.raises(KeyStateError):
        ring.destroy(active.kid)  # an active key must be retired first
    ring.retire(active.kid)
    assert ring.active(Purpose.LEDGER_CHECKPOINT).kid == nxt.kid
    with pytest.raises(KeyStateError):
        ring.retire(active.kid)
    ring.destroy(active.kid)
    with pytest.raises(KeyStateError):
        ring.destroy(active.kid)
    with pytest.raises(KeyNotFound):
        ring.get("no-such-kid")


def test_stable_purpose_needs_force(store: KeyStore) -> None:
    ring = Keyring(store, KEK, clock=Clock())
    ring.ensure([Purpose.PAIRWISE_SUBJECT])
    before = ring.secret(Purpose.PAIRWISE_SUBJECT)
    with pytest.raises(KeyStateError, match="force"):
        ring.rotate(Purpose.PAIRWISE_SUBJECT)
    assert ring.secret(Purpose.PAIRWISE_SUBJECT) == before
    ring.rotate(Purpose.PAIRWISE_SUBJECT, force=True)
    assert ring.secret(Purpose.PAIRWISE_SUBJECT) != before


def test_secrets_lists_active_first_then_older(store: KeyStore) -> None:
    clock = Clock()
    ring = Keyring(store, KEK, clock=clock)
    ring.ensure([Purpose.ACCOUNT_LOOKUP])
    first = ring.secret(Purpose.ACCOUNT_LOOKUP)
    clock.advance(timedelta(seconds=1))
    ring.rotate(Purpose.ACCOUNT_LOOKUP)
    kids = [kid for kid, _ in ring.secrets(Purpose.ACCOUNT_LOOKUP)]
    assert kids[0] == ring.secret(Purpose.ACCOUNT_LOOKUP)[0]
    assert first[0] in kids
    with pytest.raises(KeyStateError):
        ring.signing_key(Purpose.ACCOUNT_LOOKUP)


def test_each_purpose_gets_its_algorithm(store: KeyStore) -> None:
    ring = Keyring(store, KEK, clock=Clock())
    ring.ensure(list(Purpose))
    assert isinstance(ring.signing_key(Purpose.OIDC_RS256)[1], rsa.RSAPrivateKey)
    assert isinstance(ring.signing_key(Purpose.OIDC_PS256)[1], rsa.RSAPrivateKey)
    assert isinstance(ring.signing_key(Purpose.OIDC_ES256)[1], ec.EllipticCurvePrivateKey)
    assert len(ring.secret(Purpose.PAIRWISE_SUBJECT)[1]) == 32


def test_wrong_kek_cannot_use_stored_keys(store: KeyStore) -> None:
    Keyring(store, KEK, clock=Clock()).ensure([Purpose.OIDC_RS256])
    intruder = Keyring(store, KeyEncryptionKey(os.urandom(32)))
    intruder.reload()
    with pytest.raises(KeyDecryptionError):
        intruder.signing_key(Purpose.OIDC_RS256)


def test_stored_bytes_hold_no_private_key(tmp_path: Path) -> None:
    """Encryption at rest: neither the database file nor the key files contain the key."""
    sql = _sql_store(tmp_path / "db")
    directory = _dir_store(tmp_path / "dir")
    for store in (sql, directory):
        ring = Keyring(store, KEK, clock=Clock())
        ring.ensure([Purpose.OIDC_RS256, Purpose.LEDGER_CHECKPOINT, Purpose.ACCOUNT_LOOKUP])
        rsa_key = ring.signing_key(Purpose.OIDC_RS256)[1]
        assert isinstance(rsa_key, rsa.RSAPrivateKey)
        der = rsa_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        private_number = rsa_key.private_numbers().d.to_bytes(256, "big")
        secret = ring.secret(Purpose.ACCOUNT_LOOKUP)[1]
        ed = ring.signing_key(Purpose.LEDGER_CHECKPOINT)[1]
        ed_raw = ed.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
        for needle in (der[-64:], private_number[:32], secret, ed_raw):
            assert needle not in stored


def test_database_allows_one_active_key_per_purpose(tmp_path: Path) -> None:
    """Two operators rotating at once: the database refuses the second writer."""
    store = _sql_store(tmp_path)
    first = Keyring(store, KEK, clock=Clock())
    first.ensure([Purpose.OIDC_ES256])
    second = Keyring(store, KEK, clock=Clock())
    second.reload()
    first.rotate(Purpose.OIDC_ES256)
    with pytest.raises(KeyStoreError, match="another process"):
        second.rotate(Purpose.OIDC_ES256)  # works from a stale view
    second.reload()
    states = [r.state for r in second.records(Purpose.OIDC_ES256)]
    assert states.count(KeyState.ACTIVE) == 1
    assert states.count(KeyState.NEXT) == 1


@pytest.mark.postgres
def test_keyring_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, identity_database_url=postgres_url)
    engine = create_engine(settings.identity_url, settings)
    migrate.upgrade(migrate.Store.IDENTITY, engine)
    store = SqlKeyStore(engine)
    ring = Keyring(store, KEK, clock=Clock())
    ring.ensure(list(Purpose))
    ring.rotate(Purpose.OIDC_RS256)
    stale = Keyring(store, KEK)
    stale.reload()
    ring.rotate(Purpose.OIDC_RS256)
    with pytest.raises(KeyStoreError):
        stale.rotate(Purpose.OIDC_RS256)  # the database refuses a rotation from a stale view
    with engine.connect() as conn:
        actives = conn.execute(
            sa.text("SELECT count(*) FROM key_material WHERE state = 'active'")
        ).scalar_one()
    assert actives == len(Purpose)
    engine.dispose()
