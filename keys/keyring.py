"""The keyring: every key the service holds, by purpose and lifecycle state.

Sign with the active key of a purpose; verify with any key of the purpose that is not destroyed.
Rotation promotes the ``next`` key (already published) and creates a new ``next``; the old active
key is retired and still verifies for ``overlap``, then :meth:`Keyring.prune` destroys it.
Nothing here logs or returns private material except to the caller that asked for a signing key.

Several server processes share one store: each holds a keyring and calls :meth:`reload` now and
then; since a key is published one rotation before it signs, a process that reloads late still
verifies everything the others sign.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from keys import material
from keys.envelope import KeyEncryptionKey
from keys.errors import KeyDecryptionError, KeyNotFound, KeyStateError
from keys.material import PrivateKey, PublicKey
from keys.model import TRANSITIONS, KeyRecord, KeyState, Purpose
from keys.store import KeyStore

Clock = Callable[[], datetime]


_JWKS_PURPOSES = frozenset(p for p in Purpose if p.spec.jwks)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RotationPolicy:
    #: how long a retired key still verifies (at least the longest lifetime of what it signed)
    overlap: timedelta = timedelta(days=1)


def _aad(record: KeyRecord) -> bytes:
    return f"{record.kid}\x00{record.purpose.value}".encode()


class Keyring:
    def __init__(
        self,
        store: KeyStore,
        kek: KeyEncryptionKey,
        policy: RotationPolicy | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._kek = kek
        self._policy = policy or RotationPolicy()
        self._clock = clock
        self._lock = threading.RLock()
        self._records: dict[str, KeyRecord] = {}
        self._private: dict[str, PrivateKey | bytes] = {}
        #: JWK Sets already built, by purposes (cleared whenever a record changes)
        self._published: dict[frozenset[Purpose], dict[str, list[dict[str, Any]]]] = {}

    # -- reading -------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the store (another process may have rotated)."""
        records = self._store.load()
        with self._lock:
            self._records = {r.kid: r for r in records}
            self._published.clear()
            self._private = {
                kid: key
                for kid, key in self._private.items()
                if kid in self._records and self._records[kid].sealed is not None
            }

    def records(self, purpose: Purpose | None = None) -> list[KeyRecord]:
        return [r for r in self._records.values() if purpose is None or r.purpose is purpose]

    def get(self, kid: str) -> KeyRecord:
        try:
            return self._records[kid]
        except KeyError:
            raise KeyNotFound(f"no key with kid {kid!r}") from None

    def _in_state(self, purpose: Purpose, state: KeyState) -> KeyRecord | None:
        for record in self._records.values():
            if record.purpose is purpose and record.state is state:
                return record
        return None

    def active(self, purpose: Purpose) -> KeyRecord:
        record = self._in_state(purpose, KeyState.ACTIVE)
        if record is None:
            raise KeyNotFound(f"no active key for {purpose}")
        return record

    def signing_key(self, purpose: Purpose) -> tuple[str, PrivateKey]:
        """The active key's kid and private key, for an asymmetric purpose."""
        record = self.active(purpose)
        key = self._unsealed(record)
        if isinstance(key, bytes):
            raise KeyStateError(f"{purpose} holds secrets, not signing keys")
        return record.kid, key

    def secret(self, purpose: Purpose) -> tuple[str, bytes]:
        """The active secret's kid and bytes, for a keyed-hash purpose."""
        record = self.active(purpose)
        return record.kid, self._secret_of(record)

    def secrets(self, purpose: Purpose) -> list[tuple[str, bytes]]:
        """Every usable secret of the purpose, active first (to find what older ones hashed)."""
        order = {KeyState.ACTIVE: 0, KeyState.NEXT: 1, KeyState.RETIRED: 2}
        usable = [r for r in self.records(purpose) if r.state in order]
        usable.sort(key=lambda r: (order[r.state], -r.created_at.timestamp()))
        return [(r.kid, self._secret_of(r)) for r in usable]

    def _secret_of(self, record: KeyRecord) -> bytes:
        key = self._unsealed(record)
        if not isinstance(key, bytes):
            raise KeyStateError(f"{record.purpose} holds signing keys, not secrets")
        return key

    def verification_keys(self, purpose: Purpose) -> list[tuple[str, PublicKey]]:
        return [
            (r.kid, material.load_public(r.algorithm, r.public))
            for r in self.records(purpose)
            if r.state is not KeyState.DESTROYED
        ]

    def public_key(self, kid: str) -> tuple[KeyRecord, PublicKey]:
        """A verifying key by kid; destroyed keys no longer verify."""
        record = self.get(kid)
        if record.state is KeyState.DESTROYED or record.purpose.is_secret:
            raise KeyNotFound(f"no verifying key with kid {kid!r}")
        return record, material.load_public(record.algorithm, record.public)

    def jwks(self, purposes: Iterable[Purpose] | None = None) -> dict[str, list[dict[str, Any]]]:
        """The public JWK Set (RFC 7517 §5) of the non-destroyed keys of ``purposes``
        (by default, the purposes published in the OpenID Provider's JWKS)."""
        wanted = frozenset(purposes) if purposes is not None else _JWKS_PURPOSES
        cached = self._published.get(wanted)
        if cached is not None:
            return cached
        keys = []
        for record in self._records.values():
            if record.purpose not in wanted or record.state is KeyState.DESTROYED:
                continue
            jwk = material.public_jwk(record.algorithm, record.public)
            jwk.update({"kid": record.kid, "use": "sig", "alg": record.algorithm.value})
            keys.append(jwk)
        published = {"keys": keys}
        self._published[wanted] = published
        return published

    def _unsealed(self, record: KeyRecord) -> PrivateKey | bytes:
        cached = self._private.get(record.kid)
        if cached is not None:
            return cached
        if record.sealed is None:
            raise KeyStateError(f"key {record.kid} is destroyed")
        plain = self._kek.open(record.sealed, _aad(record))
        key: PrivateKey | bytes
        key = plain if record.purpose.is_secret else material.load_private(record.algorithm, plain)
        self._private[record.kid] = key
        return key

    # -- keys kept outside the keyring's records ----------------------------------------------

    def seal_external(self, private: bytes, label: str) -> bytes:
        """Encrypt a private key that another store keeps (denomination keys), bound to
        ``label``; the associated data cannot collide with a keyring record's (no NUL+purpose)."""
        return self._kek.seal(private, b"external\x00" + label.encode())

    def open_external(self, sealed: bytes, label: str) -> bytes:
        """Decrypt what :meth:`seal_external` sealed under ``label``."""
        return self._kek.open(sealed, b"external\x00" + label.encode())

    # -- changing ------------------------------------------------------------------------------

    def _new(self, purpose: Purpose, state: KeyState, now: datetime) -> KeyRecord:
        private, public = material.generate(purpose.algorithm)
        kid = material.new_kid(purpose.algorithm, public)
        record = KeyRecord(
            kid=kid,
            purpose=purpose,
            state=state,
            created_at=now,
            activated_at=now if state is KeyState.ACTIVE else None,
            public=public,
            sealed=b"",
        )
        return dataclasses.replace(record, sealed=self._kek.seal(private, _aad(record)))

    def _commit(self, inserts: list[KeyRecord], updates: list[KeyRecord]) -> None:
        foreign = [
            r.kid
            for r in self._records.values()
            if r.sealed and not self._kek.sealed_this(r.sealed)
        ]
        if foreign:
            # Writing now would leave keys under two KEKs, half of them unusable.
            raise KeyDecryptionError(
                f"{len(foreign)} stored key(s) are sealed under another key-encryption key; "
                "refusing to change the keyring with this one"
            )
        self._store.apply(inserts, updates)
        with self._lock:
            for record in [*updates, *inserts]:
                self._records[record.kid] = record
                self._published.clear()
                if record.sealed is None:
                    self._private.pop(record.kid, None)

    def ensure(self, purposes: Iterable[Purpose]) -> list[KeyRecord]:
        """Create what is missing so that every purpose has an active and a next key."""
        now = self._clock()
        inserts = []
        with self._lock:
            for purpose in purposes:
                if self._in_state(purpose, KeyState.ACTIVE) is None:
                    inserts.append(self._new(purpose, KeyState.ACTIVE, now))
                if self._in_state(purpose, KeyState.NEXT) is None:
                    inserts.append(self._new(purpose, KeyState.NEXT, now))
            if inserts:
                self._commit(inserts, [])
        return inserts

    def _step(self, record: KeyRecord, to: KeyState, now: datetime) -> KeyRecord:
        if TRANSITIONS.get(record.state) is not to:
            raise KeyStateError(f"key {record.kid} is {record.state}, it cannot become {to}")
        return record.moved_to(to, now)

    def rotate(self, purpose: Purpose, *, force: bool = False) -> KeyRecord:
        """Promote the published next key, retire the active one, publish a new next key.

        Returns the new active record. Purposes whose keys derive stable identifiers (pairwise
        subjects) change every derived value when rotated: that needs ``force``.
        """
        if purpose.spec.stable and not force:
            raise KeyStateError(
                f"rotating {purpose} changes every identifier derived from it; use force"
            )
        now = self._clock()
        with self._lock:
            nxt = self._in_state(purpose, KeyState.NEXT)
            if nxt is None:
                raise KeyStateError(f"{purpose} has no published next key to promote")
            updates = [self._step(nxt, KeyState.ACTIVE, now)]
            current = self._in_state(purpose, KeyState.ACTIVE)
            if current is not None:
                updates.append(self._step(current, KeyState.RETIRED, now))
            self._commit([self._new(purpose, KeyState.NEXT, now)], updates)
            return updates[0]

    def retire(self, kid: str, *, force: bool = False) -> KeyRecord:
        """Stop signing with an active key now (the next key takes over at once)."""
        record = self.get(kid)
        if record.state is not KeyState.ACTIVE:
            raise KeyStateError(f"key {kid} is {record.state}; only the active key can be retired")
        self.rotate(record.purpose, force=force)
        return self.get(kid)

    def destroy(self, kid: str) -> KeyRecord:
        """Destroy a retired key's private half now, before its overlap ends."""
        record = self.get(kid)
        updated = self._step(record, KeyState.DESTROYED, self._clock())
        self._commit([], [updated])
        return updated

    def prune(self) -> list[KeyRecord]:
        """Destroy retired keys whose overlap has ended; returns what was destroyed."""
        now = self._clock()
        with self._lock:
            expired = [
                r.moved_to(KeyState.DESTROYED, now)
                for r in self._records.values()
                if r.state is KeyState.RETIRED
                and r.retired_at is not None
                and now - r.retired_at >= self._policy.overlap
            ]
            if expired:
                self._commit([], expired)
        return expired
