"""Where the Wyoming listener binds (checked when the settings are read, so a bad DS_WYOMING_URI stops startup)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class WyomingAddress:
    """Where to listen: `tcp://host:port` or `unix:///path/to/socket`."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, uri: str) -> WyomingAddress:
        parts = urlsplit(uri)
        if parts.scheme == "tcp" and parts.hostname and parts.port is not None:
            return cls("tcp", host=parts.hostname, port=parts.port)
        if parts.scheme == "unix" and parts.path:
            return cls("unix", path=parts.path)
        raise ValueError(f"{uri!r} is not tcp://HOST:PORT or unix:///PATH")
