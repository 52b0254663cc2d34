"""Access control with OpenID Connect bearer tokens.

- `errors`: why a request is refused (InvalidToken; the 401, 403 and 400 of RFC 6750);
- `policy`: who may do what (rights from roles, or a device's own document);
- `identity`: who a request speaks for (`sub:alice`), and until when;
- `audit`: the audit line of a write;
- `keys`: the issuer's signing keys (PyJWT, httpx: imported only with access control on);
- `verification`: a JWT access token checked (imported only with access control on);
- `tickets`: single-use stream tickets for browsers' EventSource;
- `openapi`: the bearer scheme in the OpenAPI document (a reach into quart-schema);
- `extension`: AccessControl, the extension, and the accessors of the current request.

No module imports one that imports it back: `extension` imports the others, `verification`
imports `keys`, and every module may import `errors`.
"""

from quart_iot.oidc.audit import audit_line, audit_log, audit_subject
from quart_iot.oidc.extension import (
    AccessControl,
    current_access_control,
    current_audit_subject,
    current_identity,
    request_subject,
    token_expiry,
    writer_subject,
)
from quart_iot.oidc.identity import Identity

__all__ = [
    "AccessControl",
    "Identity",
    "audit_line",
    "audit_log",
    "audit_subject",
    "current_access_control",
    "current_audit_subject",
    "current_identity",
    "request_subject",
    "token_expiry",
    "writer_subject",
]
