"""AllowedHosts extension: refuse requests whose Host is a DNS name the service does not own.

A page on another origin can point its own DNS name at 127.0.0.1 (DNS rebinding); the browser
then sends that name as Host. IP literals and `localhost` are always allowed: a rebinding page
cannot make a browser send them, and probes and scrapers address a pod by its IP.
"""

import ipaddress

from quart import Quart, request

from quart_iot.errors import HostNotAllowed

ANY = "*"


def host_name(host: str) -> str:
    """The name in a Host value: no port, no IPv6 brackets, lowercase, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    name, colon, port = host.rpartition(":")
    if not colon or not port.isdigit():
        name = host
    return name.removesuffix(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AllowedHosts:
    """Extension: before any handler runs or any body is read, check the Host header."""

    def __init__(self, names: list[str]) -> None:
        self.names = frozenset(names) | {"localhost"}

    def init_app(self, app: Quart) -> None:
        app.extensions["allowed_hosts"] = self
        app.before_request(self._check)

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return ANY in self.names or name in self.names or is_ip_literal(name)

    async def _check(self) -> None:
        # Werkzeug gives "" for a missing Host or one with invalid characters: refused too.
        if not self.allows(request.host):
            raise HostNotAllowed(host_name(request.host))
