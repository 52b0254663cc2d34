"""Who makes a request: the subject a token (or a stream ticket) speaks for, its right, and
when it stops speaking for them."""

import time
from dataclasses import dataclass
from typing import Any

# The claims that name who a token speaks for, in order: `sub` (RFC 9068 requires it), else
# the client of a token that has none.
SUBJECT_CLAIMS = ("sub", "client_id", "azp")


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of one request, once its token or ticket was accepted."""

    subject: str  # "<claim>:<value>", e.g. "sub:alice" or "client_id:device-7"
    right: str  # reader, writer or device (quart_iot.oidc.policy.RIGHTS)
    expires_at: float  # the token's `exp`, seconds since the epoch

    def seconds_left(self) -> float:
        """Seconds until the token expires (negative once it has)."""
        return self.expires_at - time.time()


def subject_of(claims: dict[str, Any]) -> str | None:
    """The subject a token speaks for, saying which claim it came from (`sub:alice`), or
    None when it carries none of SUBJECT_CLAIMS."""
    for name in SUBJECT_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}"
    return None
