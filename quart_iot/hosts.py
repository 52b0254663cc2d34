"""AllowedHosts extension: refuse requests whose Host is a DNS name the service does not own.

A page on another origin can point its own DNS name at 127.0.0.1 (DNS rebinding); the browser
then sends that name as Host. IP literals and `localhost` are always allowed: a rebinding page
cannot make a browser send them, and probes and scrapers address a pod by its IP. A Host that
is no host at all (an empty or over-long label: `a..b`, `.`) is a 400, whatever ALLOWED_HOSTS.
"""

import ipaddress
import re

from quart import Quart, request
from quart.wrappers import BaseRequestWebsocket
from werkzeug.exceptions import BadHost
from werkzeug.routing import MapAdapter

from quart_iot.errors import HostNotAllowed, InvalidHost

ANY = "*"
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_NAME_LENGTH = 253  # RFC 1035's limit of a name in text, without the final dot


class HostCheckedQuart(Quart):
    """Quart, whose request context survives a Host that is no host name.

    Quart binds its URL map to the request's Host before any hook runs, and werkzeug raises
    BadHost for a name with an empty or over-long label: hypercorn then answered an empty 500
    with a 58-line traceback, and the request was missing from the metrics. Here the request
    goes unrouted instead, and AllowedHosts, which refuses every such Host, answers it.
    """

    def create_url_adapter(self, request: BaseRequestWebsocket | None) -> MapAdapter | None:
        try:
            return super().create_url_adapter(request)
        except BadHost:
            return None  # no route: AllowedHosts refuses it in its before_request hook


def split_host(host: str) -> str:
    """The host in a Host value: no port, no IPv6 brackets, lowercase (a final dot kept)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def host_name(host: str) -> str:
    """The name in a Host value: no port, no IPv6 brackets, lowercase, no trailing dot."""
    return split_host(host).removesuffix(".")


def is_host(host: str) -> bool:
    """Whether a Host value names a host: an IP literal, or a DNS name of valid labels (one
    final dot allowed). An empty Host passes here: HostNotAllowed refuses it."""
    name = split_host(host)
    if not name or is_ip_literal(name):
        return True
    name = name.removesuffix(".")
    return len(name) <= _NAME_LENGTH and all(map(_LABEL.fullmatch, name.split(".")))


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
        if not is_host(request.host):
            raise InvalidHost
        # Werkzeug gives "" for a missing Host or one with invalid characters: refused too.
        if not self.allows(request.host):
            raise HostNotAllowed(host_name(request.host))
