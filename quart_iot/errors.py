"""The ApiError family, and the one place that turns any error into the contract's JSON body."""

import logging
from typing import Any

from pydantic import ValidationError
from quart import Quart, Response, g, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from quart_iot.correlation import current_correlation_id

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on; subclasses carry their status and code."""

    status: int = 500
    code: str = "INTERNAL_ERROR"
    headers: dict[str, str] | None = None  # sent with the error body (WWW-Authenticate, say)

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.status = status or self.status
        self.code = code or self.code


class InvalidMac(ApiError):
    status, code = 400, "INVALID_OPERATION"

    def __init__(self) -> None:
        super().__init__(
            "Invalid MAC address: expected six pairs of hex digits joined by '-', "
            "like aa-bb-cc-dd-ee-ff"
        )


class InvalidPath(ApiError):
    """A path under /api/configs/ that no route takes, past a valid MAC address."""

    status, code = 400, "INVALID_OPERATION"


class InvalidBody(ApiError):
    status, code = 400, "VALIDATION_FAILED"


class UnsupportedMediaType(ApiError):
    status, code = 415, "UNSUPPORTED_MEDIA_TYPE"

    def __init__(self) -> None:
        super().__init__("The request body must be JSON, sent as Content-Type: application/json")


class ConfigNotFound(ApiError):
    status, code = 404, "RECORD_NOT_FOUND"

    def __init__(self, mac: str) -> None:
        super().__init__(f"Config {mac} was not found")


class InvalidVersion(ApiError):
    status, code = 400, "INVALID_OPERATION"

    def __init__(self) -> None:
        super().__init__(
            "Invalid version: expected the id of a version as the history lists it, like "
            "1767225600000000000-0a1b2c3d"
        )


class VersionNotFound(ApiError):
    status, code = 404, "RECORD_NOT_FOUND"

    def __init__(self, mac: str, version: str) -> None:
        super().__init__(f"Version {version} of config {mac} was not found")


class ConfigExists(ApiError):
    status, code = 409, "RECORD_EXISTS"

    def __init__(self, mac: str) -> None:
        super().__init__(f"Config {mac} already exists and allow_overwrite is false")


class ConfigUnreadable(ApiError):
    status, code = 422, "RECORD_UNREADABLE"

    def __init__(self, mac: str, problem: str = "is not a readable JSON object file") -> None:
        super().__init__(f"Config {mac} exists but {problem}")


class PreconditionFailed(ApiError):
    status, code = 412, "PRECONDITION_FAILED"

    def __init__(self, mac: str, header: str, what: str = "Config") -> None:
        super().__init__(f"{what} {mac} does not match the {header} condition")


class InvalidModelCode(ApiError):
    status, code = 400, "INVALID_OPERATION"

    def __init__(self) -> None:
        super().__init__(
            "Invalid device model code: expected 1 to 64 characters of a-z, 0-9 and _, "
            "like esp32_devkitc"
        )


class ModelNotFound(ApiError):
    status, code = 404, "RECORD_NOT_FOUND"

    def __init__(self, model: str) -> None:
        super().__init__(f"Device model {model} was not found")


class ModelUnreadable(ApiError):
    """A device model's file (or row) that holds no usable model: not the service's JSON."""

    status, code = 422, "RECORD_UNREADABLE"

    def __init__(self, model: str, problem: str = "is not a readable device model") -> None:
        super().__init__(f"Device model {model} exists but {problem}")


class UnknownModel(ApiError):
    """The content names a device model that nobody defined (or no model code at all)."""

    status, code = 422, "UNKNOWN_MODEL"

    def __init__(self, model: object) -> None:
        if isinstance(model, str) and len(model) <= 64:
            super().__init__(
                f"The content names device model {model!r} (deviceModel), which is not defined",
                {"deviceModel": model},
            )
        else:  # not a code at all: not echoed (it may be large)
            super().__init__(
                "The content's deviceModel is not a device model code (1 to 64 characters of "
                "a-z, 0-9 and _)",
                {"deviceModel": None},
            )


class ModelInUse(ApiError):
    status, code = 409, "MODEL_IN_USE"

    def __init__(self, model: str, devices: int) -> None:
        super().__init__(
            f"Device model {model} is named by {devices} device config(s): change their "
            "deviceModel first",
            {"devices": devices},
        )


def _first(violations: list[dict[str, str]], truncated: bool) -> str:
    """How many violations, and the first: the sentence of a schema error."""
    count = f"{len(violations)}{' or more' if truncated else ''} violation(s)"
    first = violations[0]
    return f"{count}, the first at {first['path'] or 'the top'}: {first['message']}"


class InvalidSchema(ApiError):
    """A configSchema that is not a draft 2020-12 JSON Schema we can use."""

    status, code = 422, "INVALID_SCHEMA"

    def __init__(self, violations: list[dict[str, str]], truncated: bool = False) -> None:
        super().__init__(
            "configSchema is not a valid JSON Schema (draft 2020-12): "
            + _first(violations, truncated),
            {"violations": violations, "truncated": truncated},
        )


class SchemaViolation(ApiError):
    """Content that does not conform to the schema of the model it names; nothing was written."""

    status, code = 422, "SCHEMA_VIOLATION"

    def __init__(self, model: str, violations: list[dict[str, str]], truncated: bool) -> None:
        super().__init__(
            f"The content does not conform to the configSchema of device model {model}: "
            + _first(violations, truncated),
            {"deviceModel": model, "violations": violations, "truncated": truncated},
        )


class InvalidPatch(InvalidBody):
    """A PATCH body that is not a patch (400 whatever the document)."""

    def __init__(self, message: str, loc: list[str | int], kind: str = "value_error") -> None:
        super().__init__(message, {"errors": [{"loc": loc, "msg": message, "type": kind}]})


class UnprocessablePatch(ApiError):
    """A well-formed patch that cannot be carried out whatever the document, or whose result
    would not be a config (RFC 5789 2.2: 422). What the OpenAPI schema of a patch cannot say."""

    status, code = 422, "UNPROCESSABLE_PATCH"

    def __init__(
        self,
        message: str = "The patched document would not be a JSON object, which a config is",
        operation: int | None = None,
    ) -> None:
        details = {"operation": operation} if operation is not None else None
        super().__init__(f"{message}; nothing was written", details)


class PatchConflict(ApiError):
    """A well-formed JSON Patch that does not apply to the current document."""

    status, code = 409, "PATCH_CONFLICT"

    def __init__(self, operation: int, op: str, path: str, reason: str) -> None:
        super().__init__(
            f'Operation {operation} ({op} "{path}") does not apply: {reason}',
            {"operation": operation, "op": op, "path": path},
        )


class UnsupportedPatchType(ApiError):
    status, code = 415, "UNSUPPORTED_MEDIA_TYPE"
    # RFC 5789 3.1: a 415 to a PATCH says which patch documents are accepted.
    headers = {"Accept-Patch": "application/merge-patch+json, application/json-patch+json"}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__(
            "A PATCH body must be sent as Content-Type: application/merge-patch+json (RFC 7396) "
            "or application/json-patch+json (RFC 6902)"
        )


class InvalidFilter(ApiError):
    """A malformed RQL filter (or `fields` list): the message and `details` name the position."""

    status, code = 400, "INVALID_FILTER"

    def __init__(self, problem: str, text: str, position: int, parameter: str = "filter") -> None:
        near = text[position : position + 24]
        super().__init__(
            f"Invalid {parameter} at position {position}: {problem}",
            {"parameter": parameter, "position": position, "near": near, "problem": problem},
        )
        self.position = position
        self.problem = problem


class InvalidFields(InvalidFilter):
    status, code = 400, "INVALID_FIELDS"

    def __init__(self, problem: str, text: str, position: int) -> None:
        super().__init__(problem, text, position, "fields")


class HostNotAllowed(ApiError):
    # 421 Misdirected Request (RFC 9110 15.5.20): not a host this server answers for.
    status, code = 421, "HOST_NOT_ALLOWED"

    def __init__(self, host: str = "") -> None:
        # Whoever meets it first is usually the operator of a new deployment: say what to change.
        super().__init__(
            "The Host header names a host this service does not serve; if clients may reach it "
            "by this name, add the name to the ALLOWED_HOSTS setting (a JSON list of host names)",
            {"host": host, "setting": "ALLOWED_HOSTS"},
        )


class InvalidHost(ApiError):
    # RFC 9112 3.2: a Host with an invalid value is a 400.
    status, code = 400, "INVALID_HOST"

    def __init__(self) -> None:
        super().__init__(
            "The Host header is not a valid host: an IP address, or a DNS name whose labels "
            "are 1 to 63 letters, digits, hyphens or underscores"
        )


class StorageUnavailable(ApiError):
    status, code = 503, "STORAGE_UNAVAILABLE"

    def __init__(self, reason: str = "the configs directory cannot be used") -> None:
        super().__init__(f"Config storage is unavailable: {reason}")
        self.reason = reason


class DocumentTooLarge(ApiError):
    status, code = 413, "PAYLOAD_TOO_LARGE"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"The document would be stored as {size} bytes, more than the limit of {limit}",
            {"stored_size": size, "limit": limit},
        )


class WritesBlocked(ApiError):
    status, code = 503, "WRITES_BLOCKED"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"Config writes are blocked: the configs directory's write lock was held by "
            f"someone else for more than {seconds:g} s; nothing was changed"
        )


class WriteNotConfirmed(ApiError):
    """The change happened and is visible, but the disk did not confirm it is durable."""

    status, code = 503, "WRITE_NOT_CONFIRMED"

    def __init__(self, mac: str, change: str, etag: str | None, what: str = "Config") -> None:
        super().__init__(
            f"{what} {mac} was {change} and is visible, but the disk did not confirm that the "
            "change is durable: a crash of the storage server may undo it",
            {"change": change, "etag": etag},
        )


class ShuttingDown(ApiError):
    status, code = 503, "SHUTTING_DOWN"
    headers = {"Retry-After": "1"}  # noqa: RUF012 - another replica (or this one, restarted) takes it

    def __init__(self, message: str = "The server is shutting down; retry the write") -> None:
        super().__init__(message)


class TooManyWaiters(ApiError):
    """MAX_WAITERS requests are held open already: this one may not wait."""

    status, code = 503, "TOO_MANY_WAITERS"
    headers = {"Retry-After": "5"}  # noqa: RUF012 - a held request ends within MAX_WAIT_SECONDS

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This server holds {limit} waiting requests already (MAX_WAITERS); retry later, "
            "or read without waiting"
        )


class WriteOutlived(ShuttingDown):
    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down and this write did not finish in time; it may or may "
            "not have been applied (retry it, or read the config to see)"
        )


_HTTP_CODES = {
    400: ("VALIDATION_FAILED", "The request is malformed"),
    404: ("ROUTE_NOT_FOUND", "The requested URL was not found"),
    405: ("METHOD_NOT_ALLOWED", "The method is not allowed for this URL"),
    408: ("REQUEST_TIMEOUT", "The request body was not received in time"),
    413: ("PAYLOAD_TOO_LARGE", "The request body is larger than the limit"),
}


def error_response(error: ApiError) -> Response:
    """The JSON body of the contract, for any ApiError."""
    g.error_code = error.code
    body = {
        "error": error.message,
        "code": error.code,
        "details": error.details,
        "correlationId": current_correlation_id(),
        "status": error.status,
    }
    response = jsonify(body)
    response.status_code = error.status
    if error.headers:
        response.headers.update(error.headers)
    return response


async def handle_api_error(error: ApiError) -> Response:
    """The answer to an ApiError, logged on one line (no stack trace: the client's error)."""
    log.info("%s %s: %s", error.status, error.code, error.message)
    return error_response(error)


async def _validation_error(error: RequestSchemaValidationError) -> Response:
    cause = error.validation_error
    errors = (
        cause.errors(include_url=False, include_input=False, include_context=False)
        if isinstance(cause, ValidationError)
        else [{"loc": [], "msg": str(cause), "type": "value_error"}]
    )
    items = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return await handle_api_error(InvalidBody("The request body is invalid", {"errors": items}))


async def handle_http_error(error: HTTPException) -> Response:
    """The answer to werkzeug's errors (a path under /api/configs/ that no route takes is
    named by blueprints/history.py instead)."""
    status = error.code or 500
    code, message = _HTTP_CODES.get(status, (f"HTTP_{status}", error.name))
    response = await handle_api_error(ApiError(message, status=status, code=code))
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
    return response


async def _unexpected_error(error: Exception) -> Response:
    log.exception("unexpected error", exc_info=error)
    return error_response(ApiError("Internal server error"))


def register_error_handlers(app: Quart) -> None:
    """Route every error, whatever raised it, to the one JSON error body."""
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(RequestSchemaValidationError, _validation_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, _unexpected_error)


class InvalidChangeId(ApiError):
    status, code = 400, "INVALID_OPERATION"

    def __init__(self) -> None:
        super().__init__(
            "Invalid change id: expected the id of a bulk change, like 1767225600000000000-0a1b2c3d"
        )


class ChangeNotFound(ApiError):
    status, code = 404, "RECORD_NOT_FOUND"

    def __init__(self, change_id: str) -> None:
        super().__init__(f"Bulk change {change_id} was not found")


class TooManyDevices(ApiError):
    """A bulk change whose filter selects more devices than MAX_BULK_DEVICES: nothing written."""

    status, code = 422, "TOO_MANY_DEVICES"

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"The filter selects {count} devices, more than a bulk change may change at once "
            f"({limit}, MAX_BULK_DEVICES): narrow the filter, or change them in several steps",
            {"count": count, "limit": limit},
        )


class ChangeRunning(ApiError):
    """A revert of a bulk change that has not ended yet."""

    status, code = 409, "CHANGE_RUNNING"

    def __init__(self, change_id: str) -> None:
        super().__init__(f"Bulk change {change_id} is still running: revert it once it ended")
