"""The audit line of a write: what was asked, the decision, who asked, the ETags around it.

The log formatter escapes whatever is not printable (quart_iot/logs.py); on top of that each
field a client chose (the MAC as sent, the token's claims) is written bare only when it is
made of plain characters, else quoted as a JSON string, so that a space in a `sub` cannot
write a field of its own either.
"""

import json
import logging
import re
from typing import Any

audit_log = logging.getLogger("quart_iot.audit")

# The claims the audit line names, the subject's own claim first.
AUDIT_CLAIMS = ("sub", "client_id", "azp", "preferred_username")
MAX_FIELD = 255  # OpenID Connect's limit for `sub`; longer is cut (and says so)
_PLAIN = re.compile(r"[A-Za-z0-9._@:/+=-]+")


def field(value: str) -> str:
    """`value` as one field of the line: bare when plain, else a JSON string."""
    cut = value[:MAX_FIELD]
    text = cut if _PLAIN.fullmatch(cut) else json.dumps(cut, ensure_ascii=False)
    return text + ("..." if len(value) > MAX_FIELD else "")


def audit_subject(claims: dict[str, Any]) -> str:
    """Who the token speaks for, as the audit line names them:
    `sub:alice client_id:spa preferred_username:alice` (`anonymous` without claims)."""
    parts = []
    for name in AUDIT_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value:
            parts.append(f"{name}:{field(value)}")
    return " ".join(parts) or "anonymous"


def audit_line(
    method: str,
    target: str,
    status: int,
    decision: str,
    subject: str,
    before: str | None,
    after: str | None,
) -> str:
    """One write as the audit log tells it; `target` is the MAC as sent (or the path)."""
    return (
        f"audit: {method} {field(target)} {status} {decision} by {subject}; "
        f"etag before {before or 'none'}, after {after or 'none'}"
    )
