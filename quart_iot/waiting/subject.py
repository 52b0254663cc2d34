"""Who a request waits for: the one place waiting asks access control.

The subject is opaque here (`sub:alice`-style, or today the bare `sub`); None when access
control is off or the request carries no identity.
"""

from quart_iot.auth import writer_subject  # moves to quart_iot.oidc: change this line only


def request_subject() -> str | None:
    """The subject of the request being served."""
    return writer_subject()
