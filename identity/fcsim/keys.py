"""The simulator's two signing keys: one ES256 (P-256) and one RS256 (2048-bit RSA).

FranceConnect v2 signs ID tokens and UserInfo responses with ES256 or RS256, the algorithm each
service provider registered (documentation, *Migration v1 → v2 › Modification des algorithmes de
signature*), and publishes its public keys at ``/api/v2/jwks``. Key ids are RFC 7638 thumbprints.

With a ``key_file`` the private keys are kept as a JSON JWK Set (mode 0600) and reused across
restarts, so a client's cached JWKS stays valid; without one they live in memory only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from identity.fcsim.errors import SimulatorConfigError
from keys.material import thumbprint

RSA_BITS = 2048
_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e")}


class InvalidSignature(Exception):
    """A token was not signed by one of this simulator's keys (every failure is this one)."""


class SigningKeys:
    """Sign with the key of an algorithm; verify tokens this simulator issued."""

    def __init__(self, es256: ec.EllipticCurvePrivateKey, rs256: rsa.RSAPrivateKey) -> None:
        if not isinstance(es256.curve, ec.SECP256R1):
            raise SimulatorConfigError("the ES256 key must be on P-256")
        if rs256.key_size < RSA_BITS:
            raise SimulatorConfigError(f"the RS256 key must have at least {RSA_BITS} bits")
        self._private: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {
            "ES256": es256,
            "RS256": rs256,
        }
        self._public_jwks: dict[str, dict[str, Any]] = {}
        for alg, key in self._private.items():
            jwk = _public_jwk(key)
            jwk.update(kid=thumbprint(jwk), alg=alg, use="sig")
            self._public_jwks[alg] = jwk

    @classmethod
    def generate(cls) -> SigningKeys:
        return cls(
            ec.generate_private_key(ec.SECP256R1()),
            rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS),
        )

    @classmethod
    def load_or_create(cls, key_file: Path | None) -> SigningKeys:
        """Keys from ``key_file`` when it exists; new keys (written there when given) if not."""
        if key_file is None:
            return cls.generate()
        if key_file.exists():
            return cls._load(key_file)
        keys = cls.generate()
        keys._save(key_file)
        return keys

    def kid(self, alg: str) -> str:
        return str(self._public_jwks[alg]["kid"])

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 §5): public members, ``kid``, ``alg`` and ``use``."""
        return {"keys": [dict(jwk) for jwk in self._public_jwks.values()]}

    def sign(self, claims: dict[str, Any], alg: str, typ: str = "JWT") -> str:
        """A JWS over ``claims`` with the key of ``alg`` and its ``kid`` in the header."""
        return jwt.encode(
            claims, self._private[alg], algorithm=alg, headers={"kid": self.kid(alg), "typ": typ}
        )

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token signed by one of these keys, whatever its expiry.

        Only the signature is checked here (the key is chosen by ``kid`` and must match the
        header's ``alg``); the caller checks the claims it cares about.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidSignature from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._private or kid != self.kid(alg):
            raise InvalidSignature
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._private[alg].public_key(),
                algorithms=[alg],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise InvalidSignature from None
        return claims

    # -- persistence ----------------------------------------------------------------------------

    @classmethod
    def _load(cls, key_file: Path) -> SigningKeys:
        try:
            document = json.loads(key_file.read_text(encoding="utf-8"))
            by_alg = {jwk["alg"]: jwk for jwk in document["keys"]}
            es256 = ECAlgorithm.from_jwk(by_alg["ES256"])
            rs256 = RSAAlgorithm.from_jwk(by_alg["RS256"])
        except (OSError, ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
            raise SimulatorConfigError(
                f"simulator key file {key_file} is unreadable: {type(exc).__name__}"
            ) from None
        if not isinstance(es256, ec.EllipticCurvePrivateKey) or not isinstance(
            rs256, rsa.RSAPrivateKey
        ):
            raise SimulatorConfigError(f"simulator key file {key_file} holds public keys only")
        return cls(es256, rs256)

    def _save(self, key_file: Path) -> None:
        """Write the private JWK Set atomically, readable by the owner only."""
        document = {
            "keys": [
                {**json.loads(_to_jwk(key)), "alg": alg, "kid": self.kid(alg), "use": "sig"}
                for alg, key in self._private.items()
            ]
        }
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fcsim-keys-", dir=key_file.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2)
            os.replace(tmp, key_file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _to_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECAlgorithm.to_jwk(key)
    return RSAAlgorithm.to_jwk(key)


def _public_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(_to_jwk(key))
    return {name: jwk[name] for name in _PUBLIC_MEMBERS[jwk["kty"]]}
