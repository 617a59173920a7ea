"""Typed access to the app's shared services from routes: `services: ServicesDep` instead of `app.state` reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from app.service.admission import Ticket
from app.service.services import Services
from app.settings import Settings
from app.speech.engine import Engine
from app.web.limits import UPLOAD_TICKET


def get_services(connection: HTTPConnection) -> Services:
    services: Services = connection.app.state.services
    return services


def get_engine(connection: HTTPConnection) -> Engine:
    return get_services(connection).engine


def get_settings(connection: HTTPConnection) -> Settings:
    return get_services(connection).settings


def get_upload_ticket(connection: HTTPConnection) -> Ticket | None:
    """The queue place app/web/limits.py's UploadAdmission took before the upload was read (None elsewhere)."""
    ticket: Ticket | None = connection.scope.get(UPLOAD_TICKET)
    return ticket


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
UploadTicketDep = Annotated[Ticket | None, Depends(get_upload_ticket)]
