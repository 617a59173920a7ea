"""Typed access to the app's shared services from routes: `services: ServicesDep` instead of `app.state` reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from app.service.services import Services
from app.settings import Settings
from app.speech.engine import Engine


def get_services(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services


def get_engine(connection: HTTPConnection) -> Engine:
    return get_services(connection).engine


def get_settings(connection: HTTPConnection) -> Settings:
    return get_services(connection).settings


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
