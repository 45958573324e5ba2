"""Is a registry reachable at all? A route lookup before a pull, so that an offline
machine says so at once instead of after skopeo's connection timeout.

Only registry references (`docker://`) go over the network; the others are local.
The registry host is the reference's domain as containers/image reads it: the first
path component when it has a `.` or `:` or is `localhost`, else Docker Hub
(`registry-1.docker.io`, the host skopeo talks to for `docker.io`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

from cfsboot.linux.route import RouteGet, have_netlink, netlink_route_get, route_to
from cfsboot.oci.reference import ImageRef, Transport

DOCKER_HUB = "registry-1.docker.io"
Resolve = Callable[[str], Sequence[str]]


def registry_host(ref: ImageRef) -> str | None:
    """The host a registry reference is pulled from (no port); None for other transports."""
    if ref.transport is not Transport.DOCKER:
        return None
    name = ref.path.removeprefix("//")
    first, slash, _ = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return DOCKER_HUB
    if first == "docker.io":
        return DOCKER_HUB
    if first.startswith("["):  # [IPv6]:PORT
        return first[1:].partition("]")[0]
    return first.partition(":")[0]


def resolve(host: str) -> list[str]:
    """The host's addresses (an OSError when it has none): an IP literal is itself."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def offline_reason(
    ref: ImageRef,
    *,
    route_get: RouteGet = netlink_route_get,
    resolver: Resolve = resolve,
) -> str | None:
    """Why `ref` cannot be reached now ("offline: no route to HOST"); None when it may be.

    None too when there is nothing to ask (not a registry, or no pyroute2 to ask with).
    """
    host = registry_host(ref)
    if host is None or (route_get is netlink_route_get and not have_netlink()):
        return None
    try:
        addresses = resolver(host)
    except OSError as e:
        return f"offline: cannot resolve {host} ({e.strerror or e})"
    if not any(route_to(a, route_get) is not None for a in addresses):
        return f"offline: no route to {host}"
    return None
