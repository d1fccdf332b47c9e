"""A built-in FranceConnect v2 simulator, for development, demonstrations and tests.

It behaves like FranceConnect v2 as a service provider ("fournisseur de service") sees it —
discovery, JWKS, authorize, token (``client_secret_post`` or ``private_key_jwt``), a signed
UserInfo JWT, session/end — with fictitious test identities chosen on a login page that says
plainly it is not FranceConnect. Reference: FranceConnect's partner documentation
(docs.partenaires.franceconnect.gouv.fr, *Fournisseur de service › Documentation technique*),
OpenID Connect Core 1.0, Discovery 1.0, RP-Initiated Logout 1.0, RFC 6749, 6750, 7523, 9207.

Public API::

    config = SimulatorConfig(
        issuer="http://127.0.0.1:8000/fc-sim/api/v2",
        clients=(SimulatorClient("my-sp", ("http://127.0.0.1:8000/callback",), (...)),),
        sub_secret=secret_bytes,
    )
    app.mount("/fc-sim", create_simulator(config))

Modules: ``config`` (what an instance is given), ``keys`` (its ES256 and RS256 keys),
``identities`` (test identities, claims, pairwise ``sub``), ``authorize`` (request validation),
``store`` (in-memory state), ``simulator`` (the tokens it mints), ``provider``/``token``/``login``
(routes), ``pages`` (HTML), ``errors`` (the error tree), ``app`` (``create_simulator``).
"""

from identity.fcsim.app import create_simulator
from identity.fcsim.config import SimulatorClient, SimulatorConfig
from identity.fcsim.errors import SimulatorConfigError, SimulatorError

__all__ = [
    "SimulatorClient",
    "SimulatorConfig",
    "SimulatorConfigError",
    "SimulatorError",
    "create_simulator",
]
