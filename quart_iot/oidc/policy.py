"""Who may do what: the right a token's claims give for one request."""

from dataclasses import dataclass
from typing import Any

from quart import Request

from quart_iot.settings import Settings

PROTECTED = "/api/configs"  # every path under it needs a bearer token (or a stream ticket)
MODELS = "/api/models"  # device models: the same roles, and no device reads them
READ_METHODS = frozenset({"GET", "HEAD"})
DEVICE_ENDPOINT = "configs.get_device_config"
EVENTS_ENDPOINT = "configs.config_events"
TICKETS_ENDPOINT = "stream_tickets"
TICKETS_PATH = "/api/configs/events/tickets"
# The rights that allow a request; any other answer of `Policy.right` is why it is refused.
RIGHTS = frozenset({"reader", "writer", "device"})


def is_protected(path: str) -> bool:
    return any(path == top or path.startswith(top + "/") for top in (PROTECTED, MODELS))


@dataclass(frozen=True)
class Access:
    """What a request asks for, as the policy sees it."""

    method: str
    endpoint: str | None
    mac: str | None

    @classmethod
    def of(cls, request: Request) -> "Access":
        """The request's access; a stream ticket asks for what the stream it opens does."""
        if request.endpoint == TICKETS_ENDPOINT:
            return cls("GET", EVENTS_ENDPOINT, None)
        mac = (request.view_args or {}).get("mac_address")
        return cls(request.method, request.endpoint, mac if isinstance(mac, str) else None)

    @property
    def reads(self) -> bool:
        return self.method in READ_METHODS


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def roles_in(value: Any) -> set[str]:
    """Roles from a list claim, or from a space-separated string such as `scope`."""
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


class Policy:
    """Rights from roles (reader, writer) or from a device claim (its own document only)."""

    def __init__(self, settings: Settings) -> None:
        self.roles_claim = settings.oidc_roles_claim
        self.read_role = settings.oidc_read_role
        self.write_role = settings.oidc_write_role
        self.device_claim = settings.oidc_device_claim

    def right(self, claims: dict[str, Any], access: Access) -> str:
        """The right that allows `access` (one of RIGHTS), else why it is refused."""
        device = claim_at(claims, self.device_claim)
        if device is not None:  # a device token reads its own document and nothing else
            own = isinstance(device, str) and str(access.mac).lower() == device.lower()
            reading = access.endpoint == DEVICE_ENDPOINT and access.reads
            return "device" if own and reading else "device_scope"
        roles = roles_in(claim_at(claims, self.roles_claim))
        if self.write_role in roles:
            return "writer"
        if access.reads and self.read_role in roles:
            return "reader"
        return "no_role"
