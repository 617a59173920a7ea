"""Where the Wyoming listener binds (checked when the settings are read, so a bad DS_WYOMING_URI stops startup)."""

from __future__ import annotations

import os
import socket
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

    def bind(self) -> socket.socket:
        """The listening socket (raises OSError: address in use, no permission), bound before the server starts so
        that `python -m app` can say what is wrong in one line."""
        if self.scheme == "tcp":
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            return socket.create_server((self.host, self.port), family=family, reuse_port=False)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            os.unlink(self.path)  # a socket file left by an earlier run; connecting to it would fail anyway
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen()
        return listener
