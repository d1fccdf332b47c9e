"""The simulator's memory: pending authorizations, codes, access tokens, assertion ids and browser
sessions. A simulator runs in one process, so this lives in the app instance; every route that
touches it is ``async`` and runs on the event loop, one at a time.

Lifetimes are FranceConnect's (documentation, *Les données de FranceConnect qui expirent*):
authorization code 30 s, access token 60 s, web session 30 minutes. Secrets (codes, tokens) are
kept under their SHA-256 digest, never in clear, and every expiry reads the injected clock.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from identity.fcsim.errors import InvalidGrant, InvalidToken

CODE_TTL = 30.0
ACCESS_TOKEN_TTL = 60.0
SESSION_TTL = 30 * 60.0


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request, waiting for the tester to pick an identity."""

    client_id: str
    redirect_uri: str
    state: str
    nonce: str
    scopes: tuple[str, ...]
    #: the eIDAS level granted (the lowest level asked for, ``eidas1`` by default)
    acr: str
    #: the client asked for ``amr`` in the ID token (claims parameter, OpenID Connect Core §5.5)
    want_amr: bool
    #: re-authentication forced (``prompt=login``)
    force_login: bool


@dataclass(frozen=True)
class Grant:
    """What an authorization code, then an access token, stands for."""

    request: AuthorizationRequest
    login: str
    sid: str
    auth_time: int


@dataclass
class _Interaction:
    request: AuthorizationRequest
    browser: str
    expires_at: float


@dataclass
class _Code:
    grant: Grant
    expires_at: float
    used: bool = False
    tokens: list[str] = field(default_factory=list)


@dataclass
class _AccessToken:
    grant: Grant
    expires_at: float


@dataclass
class BrowserSession:
    """A browser known to the simulator by its cookie; ``login`` is set once signed in."""

    expires_at: float
    login: str | None = None
    sid: str | None = None
    auth_time: int | None = None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Store:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._interactions: dict[str, _Interaction] = {}
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, _AccessToken] = {}
        self._jtis: dict[tuple[str, str], float] = {}
        self._browsers: dict[str, BrowserSession] = {}

    def now(self) -> float:
        return self._clock()

    def _prune(self) -> None:
        now = self.now()
        for table in (self._interactions, self._codes, self._tokens, self._browsers):
            for key in [k for k, v in table.items() if v.expires_at <= now]:
                del table[key]
        for jti in [k for k, exp in self._jtis.items() if exp <= now]:
            del self._jtis[jti]

    # -- browser sessions (the simulator's own cookie) ---------------------------------------

    def browser(self, browser_id: str | None) -> BrowserSession | None:
        if browser_id is None:
            return None
        session = self._browsers.get(_digest(browser_id))
        if session is None or session.expires_at <= self.now():
            return None
        return session

    def new_browser(self) -> str:
        self._prune()
        browser_id = secrets.token_urlsafe(32)
        self._browsers[_digest(browser_id)] = BrowserSession(self.now() + SESSION_TTL)
        return browser_id

    def sign_in(self, browser_id: str, login: str) -> BrowserSession:
        """Mark the browser signed in as ``login``; a new session id (``sid``) every time."""
        session = BrowserSession(
            expires_at=self.now() + SESSION_TTL,
            login=login,
            sid=secrets.token_urlsafe(24),
            auth_time=int(self.now()),
        )
        self._browsers[_digest(browser_id)] = session
        return session

    def end_session(self, sid: str) -> None:
        """Sign out every browser of session ``sid`` (RP-Initiated Logout 1.0 §2)."""
        for session in self._browsers.values():
            if session.sid == sid:
                session.login = session.sid = session.auth_time = None

    # -- authorization requests waiting on the login page ------------------------------------

    def start_interaction(self, request: AuthorizationRequest, browser_id: str) -> str:
        self._prune()
        uid = secrets.token_urlsafe(24)
        self._interactions[uid] = _Interaction(request, browser_id, self.now() + SESSION_TTL)
        return uid

    def interaction(self, uid: str, browser_id: str | None) -> AuthorizationRequest | None:
        """The pending request of ``uid`` if it is alive and belongs to this browser."""
        pending = self._interactions.get(uid)
        if pending is None or pending.expires_at <= self.now() or browser_id is None:
            return None
        if not secrets.compare_digest(pending.browser, browser_id):
            return None
        return pending.request

    def finish_interaction(self, uid: str) -> None:
        self._interactions.pop(uid, None)

    # -- codes and access tokens --------------------------------------------------------------

    def issue_code(self, grant: Grant) -> str:
        self._prune()
        code = secrets.token_urlsafe(32)
        self._codes[_digest(code)] = _Code(grant, self.now() + CODE_TTL)
        return code

    def redeem_code(self, code: str, client_id: str, redirect_uri: str | None) -> Grant:
        """The grant of a code, once (RFC 6749 §4.1.2, §4.1.3).

        A second redemption fails and revokes the access tokens the first one produced.
        """
        key = _digest(code)
        record = self._codes.get(key)
        if record is None or record.expires_at <= self.now():
            raise InvalidGrant("the authorization code is invalid or expired")
        if record.grant.request.client_id != client_id:
            raise InvalidGrant("the authorization code was issued to another client")
        if record.used:
            for token in record.tokens:
                self._tokens.pop(token, None)
            raise InvalidGrant("the authorization code was already used")
        if redirect_uri != record.grant.request.redirect_uri:
            raise InvalidGrant("redirect_uri differs from the authorization request's")
        record.used = True
        return record.grant

    def issue_access_token(self, code: str, grant: Grant) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        expires_at = self.now() + ACCESS_TOKEN_TTL
        self._tokens[_digest(token)] = _AccessToken(grant, expires_at)
        record = self._codes.get(_digest(code))
        if record is not None:
            record.tokens.append(_digest(token))
        return token, expires_at

    def access_token(self, token: str) -> tuple[Grant, float]:
        record = self._tokens.get(_digest(token))
        if record is None or record.expires_at <= self.now():
            raise InvalidToken("the access token is invalid or expired")
        return record.grant, record.expires_at

    # -- client assertion ids (RFC 7523 §3, item 7) -------------------------------------------

    def first_use_of_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Remember an assertion's ``jti`` until it expires; False if it was seen already."""
        self._prune()
        key = (client_id, jti)
        if key in self._jtis:
            return False
        self._jtis[key] = expires_at
        return True
