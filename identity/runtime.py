"""The composition root's parts: what the service holds while it runs.

:func:`open_runtime` builds the engines and the keyring from settings (it is what the FastAPI
lifespan and the CLI call); nothing here runs at import time.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from identity import migrate
from identity.db import create_engine
from identity.errors import ConfigurationError
from identity.settings import Settings, decode_kek
from keys.envelope import KeyEncryptionKey
from keys.errors import KeyStoreError
from keys.keyring import Clock, Keyring, RotationPolicy, utc_now
from keys.model import Purpose
from keys.store import DirectoryKeyStore, KeyStore, SqlKeyStore

log = logging.getLogger("nicecard.runtime")

#: Purposes the service needs from its first start.
REQUIRED_PURPOSES = tuple(Purpose)


@dataclass
class Runtime:
    settings: Settings
    identity_engine: sa.Engine
    ledger_engine: sa.Engine
    keyring: Keyring

    def dispose(self) -> None:
        self.identity_engine.dispose()
        self.ledger_engine.dispose()


def load_kek(settings: Settings) -> KeyEncryptionKey:
    """The key-encryption key from settings or its file; development generates one once."""
    if settings.kek is not None:
        return KeyEncryptionKey(decode_kek(settings.kek.get_secret_value(), "NICECARD_KEK"))
    if settings.kek_file is not None:
        return KeyEncryptionKey(_read_kek_file(settings.kek_file, "NICECARD_KEK_FILE"))
    if not settings.is_development:
        raise ConfigurationError("NICECARD_KEK or NICECARD_KEK_FILE must be set")
    path = settings.dev_kek_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        log.warning(
            "development key-encryption key generated; production refuses it",
            extra={"kek_file": str(path)},
        )
    return KeyEncryptionKey(_read_kek_file(path, "development key-encryption key"))


def _read_kek_file(path: Path, name: str) -> bytes:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read {path} ({exc.strerror})") from None
    return decode_kek(text, name)


def key_store(settings: Settings, identity_engine: sa.Engine) -> KeyStore:
    if settings.key_store == "directory":
        assert settings.key_directory is not None  # checked by Settings
        return DirectoryKeyStore(settings.key_directory)
    return SqlKeyStore(identity_engine)


@contextmanager
def open_runtime(
    settings: Settings, *, clock: Clock = utc_now, migrate_dev: bool = True
) -> Iterator[Runtime]:
    """Engines and keyring for the duration of the block; development applies migrations and
    creates missing keys, production expects ``nicecard db upgrade`` and ``keys`` to have run."""
    identity_engine = create_engine(settings.identity_url, settings)
    ledger_engine = create_engine(settings.ledger_url, settings)
    try:
        if settings.is_development and migrate_dev:
            migrate.upgrade(migrate.Store.IDENTITY, identity_engine)
            migrate.upgrade(migrate.Store.LEDGER, ledger_engine)
        keyring = Keyring(
            key_store(settings, identity_engine),
            load_kek(settings),
            RotationPolicy(overlap=settings.key_overlap),
            clock=clock,
        )
        try:
            keyring.reload()
        except KeyStoreError:
            if settings.is_development:
                raise
            # Stay up so /healthz answers and /readyz names the problem; reloads retry.
            log.warning("keys not loaded; run 'nicecard db upgrade' and 'nicecard keys init'")
        if settings.is_development:
            created = keyring.ensure(REQUIRED_PURPOSES)
            if created:
                log.info("development keys generated", extra={"count": len(created)})
        yield Runtime(settings, identity_engine, ledger_engine, keyring)
    finally:
        identity_engine.dispose()
        ledger_engine.dispose()
