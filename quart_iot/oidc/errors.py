"""Why a request is refused: a token we cannot accept, and the three answers of RFC 6750."""

from quart_iot.errors import ApiError

REALM = 'Bearer realm="quart_iot"'


class InvalidToken(Exception):
    """A token (or stream ticket) we cannot accept; `reason` is the metric label, `message`
    the client's (fixed text: never the token, nor anything the client sent)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Unauthorized(ApiError):
    """No usable bearer token: 401 with the RFC 6750 challenge."""

    status, code = 401, "UNAUTHORIZED"

    def __init__(self, message: str, invalid_token: bool = False) -> None:
        super().__init__(message)
        challenge = REALM
        if invalid_token:  # RFC 6750: no error code when the request carried no token at all
            challenge += f', error="invalid_token", error_description="{message}"'
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(ApiError):
    """A valid token without the right for this request."""

    status, code = 403, "FORBIDDEN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'}


class InvalidRequest(ApiError):
    """A request whose credentials are malformed as a whole (two of them, say): RFC 6750's
    `invalid_request`, a 400."""

    status, code = 400, "INVALID_REQUEST"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        challenge = f'{REALM}, error="invalid_request", error_description="{message}"'
        self.headers = {"WWW-Authenticate": challenge}
