"""FastAPI dependencies as ``Annotated`` aliases; they read what the lifespan put on app.state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from identity.runtime import Runtime
from identity.settings import Settings
from keys.keyring import Keyring


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def current_time(request: Request) -> datetime:
    """The application's clock (``create_app(clock=...)``), so tests can move time."""
    when: datetime = request.app.state.clock()
    return when


def get_keyring(request: Request) -> Keyring:
    return get_runtime(request).keyring


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
KeyringDep = Annotated[Keyring, Depends(get_keyring)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
