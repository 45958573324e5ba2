"""Does the kernel have a route to an address? One netlink RTM_GETROUTE, as `ip route get` asks.

The update timer asks before it pulls: with no route to the registry, skopeo
would wait out its connection timeout to say what netlink says at once.
pyroute2 (python3-pyroute2) speaks netlink; without it the question has no
answer (None) and the pull goes ahead as it would have.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Route types of linux/rtnetlink.h (enum rtn_type) that carry no packet anywhere.
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8
RTN_THROW = 9
NO_PATH_TYPES = frozenset({RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT, RTN_THROW})
# What the kernel answers RTM_GETROUTE with when it has no route (net/ipv4/route.c,
# net/ipv6/route.c): unreachable, prohibited (EACCES), or a blackhole/throw (EINVAL, EAGAIN).
NO_ROUTE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL, errno.EAGAIN}
)


class RouteMessage(Protocol):
    """The parts of pyroute2's rtmsg that are read: the route type and its attributes."""

    def __getitem__(self, key: str) -> Any: ...

    def get_attr(self, name: str) -> Any: ...


RouteGet = Callable[[str], Sequence[RouteMessage]]


@dataclass(frozen=True)
class Route:
    address: str
    interface: int | None  # RTA_OIF
    gateway: str | None  # RTA_GATEWAY: None for a directly connected or local address


def netlink_route_get(address: str) -> Sequence[RouteMessage]:
    """The kernel's answer to RTM_GETROUTE for `address` (an OSError carries its errno)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            return list(ipr.route("get", dst=address))
    except NetlinkError as e:
        raise OSError(e.code, os.strerror(e.code), address) from None


def have_netlink() -> bool:
    """Whether pyroute2 is installed (no lookup is made without it)."""
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return False
    return True


def route_to(address: str, route_get: RouteGet = netlink_route_get) -> Route | None:
    """The route the kernel would send packets for `address` (an IP) by; None when it has none."""
    try:
        answer = route_get(address)
    except OSError as e:
        if e.errno in NO_ROUTE_ERRNOS:
            return None
        raise
    for msg in answer:
        if msg["type"] in NO_PATH_TYPES:
            continue
        return Route(address, msg.get_attr("RTA_OIF"), msg.get_attr("RTA_GATEWAY"))
    return None
