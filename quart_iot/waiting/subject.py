"""Who a request waits for: the one place waiting asks access control.

The subject is opaque here (`sub:alice`-style); None when access control is off or the
request carries no identity (a bearer token or a stream ticket).
"""

from quart_iot.oidc import request_subject as oidc_subject


def request_subject() -> str | None:
    """The subject of the request being served."""
    return oidc_subject()
