"""The simulator's login page, standing in for FranceConnect's identity-provider choice and the
identity provider's own form (FranceConnect redirects ``/authorize`` to
``/api/v2/interaction/{uid}``; documentation, *Endpoints › Authorization Endpoint*).

The tester types a test identity's login and password. The pending request is bound to the
browser that started it (the simulator's cookie), so a login form cannot be replayed from another
browser. Cancelling — the button, or the ``cancel`` identity — answers ``access_denied``, as
FranceConnect does when the user gives up ("User auth aborted").
"""

import hmac
import logging

from fastapi import APIRouter, Request
from starlette.responses import Response

from identity.fcsim.config import API_PREFIX
from identity.fcsim.errors import AccessDenied, ErrorPage
from identity.fcsim.identities import Scenario
from identity.fcsim.simulator import BROWSER_COOKIE, Simulator
from identity.fcsim.store import AuthorizationRequest

log = logging.getLogger("nicecard.fcsim")

#: Compared against when the login is unknown, so a wrong login costs what a wrong password does.
_DUMMY_PASSWORD = "not-a-test-identity-password"  # noqa: S105 (a decoy, not a secret)


def login_router(sim: Simulator) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    config, store = sim.config, sim.store
    identities = sorted(sim.identities.values(), key=lambda i: (i.scenario != Scenario.NORMAL,))

    def pending(request: Request, uid: str) -> AuthorizationRequest:
        auth = store.interaction(uid, request.cookies.get(BROWSER_COOKIE))
        if auth is None:
            raise ErrorPage(
                "Cette demande de connexion a expiré ou vient d'un autre navigateur / "
                "This sign-in request has expired or comes from another browser",
                "Recommencez depuis le service. / Start again from the service.",
            )
        return auth

    def login_page(uid: str, auth: AuthorizationRequest, *, login: str, error: bool) -> Response:
        return sim.pages.render(
            "login.html",
            action=config.endpoint(f"interaction/{uid}"),
            client_id=auth.client_id,
            scopes=auth.scopes,
            acr=auth.acr,
            identities=identities,
            login=login,
            error=error,
        )

    @router.get("/interaction/{uid}")
    async def show(request: Request, uid: str) -> Response:
        return login_page(uid, pending(request, uid), login="", error=False)

    @router.post("/interaction/{uid}")
    async def submit(request: Request, uid: str) -> Response:
        auth = pending(request, uid)
        form = await request.form()
        action, login, password = (
            str(form.get(name, "")) for name in ("action", "login", "password")
        )
        if action == "cancel":
            store.finish_interaction(uid)
            raise AccessDenied("User auth aborted", auth.redirect_uri, auth.state)
        identity = sim.identities.get(login)
        expected = identity.password if identity is not None else _DUMMY_PASSWORD
        valid = hmac.compare_digest(password.encode("utf-8"), expected.encode("utf-8"))
        if identity is None or not valid:
            return login_page(uid, auth, login=login, error=True)
        store.finish_interaction(uid)
        if identity.scenario is Scenario.CANCEL:
            raise AccessDenied("User auth aborted", auth.redirect_uri, auth.state)
        browser_id = request.cookies.get(BROWSER_COOKIE)
        assert browser_id is not None  # pending() checked it
        session = store.sign_in(browser_id, identity.login)
        assert session.sid is not None
        assert session.auth_time is not None
        log.info("fcsim sign-in", extra={"client_id": auth.client_id, "acr": auth.acr})
        return sim.code_redirect(auth, identity.login, session.sid, session.auth_time)

    return router
