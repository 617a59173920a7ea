"""Zeroconf (mDNS) advertisement of the Wyoming listener as `_wyoming._tcp`, so Home Assistant discovers it.

The `zeroconf` package is optional (`pip install '.[zeroconf]'`): the advertisement is off unless
DS_WYOMING_ZEROCONF names the service. Written on zeroconf's own AsyncServiceInfo rather than
`wyoming.zeroconf.HomeAssistantZeroconf`, which has no way to withdraw the advertisement at shutdown.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_GROUP = "224.0.0.251"


class ZeroconfUnavailable(RuntimeError):
    """DS_WYOMING_ZEROCONF is set but the zeroconf package is not installed."""


def advertised_address(host: str) -> str:
    """The IPv4 address to advertise: the bound one, or for a wildcard bind the one multicast leaves by."""
    if host not in ("", "0.0.0.0"):
        return socket.gethostbyname(host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((MDNS_GROUP, 5353))  # no packet is sent: this only picks the route
        return str(probe.getsockname()[0])


class Advertisement:
    """One registered service; `close` withdraws it."""

    def __init__(self, zeroconf: Any, info: Any) -> None:
        self._zeroconf = zeroconf
        self.info = info

    @classmethod
    async def register(cls, name: str, host: str, port: int) -> Advertisement:
        try:
            from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
        except ImportError:
            raise ZeroconfUnavailable(
                "DS_WYOMING_ZEROCONF needs the zeroconf package: pip install '.[zeroconf]' (or unset it)"
            ) from None
        address = advertised_address(host)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(address)],
            port=port,
        )
        zeroconf = AsyncZeroconf(interfaces=[address])
        await zeroconf.async_register_service(info)
        log.info("Wyoming: advertised as %s on %s:%d (zeroconf)", name, address, port)
        return cls(zeroconf, info)

    async def close(self) -> None:
        await self._zeroconf.async_unregister_service(self.info)  # a goodbye: browsers drop it at once
        await self._zeroconf.async_close()
        log.info("Wyoming: zeroconf advertisement withdrawn")
