"""The config routes: list, get, the device endpoint, save and delete."""

from quart import Blueprint, Response, request
from quart_schema import (
    document_headers,
    document_request,
    document_response,
    tag_blueprint,
    validate_querystring,
    validate_request,
)
from werkzeug.exceptions import MethodNotAllowed

from quart_iot.apidocs import document_errors
from quart_iot.errors import ApiError, ConfigNotFound, ConfigUnreadable, PreconditionFailed
from quart_iot.models import (
    ConditionalHeaders,
    ConfigDetail,
    ConfigList,
    ConfigListQuery,
    ConfigPatch,
    ConfigSave,
    DeviceDocument,
    ETagHeader,
    EventStream,
    SavedHeaders,
)
from quart_iot.oidc import token_expiry, writer_subject
from quart_iot.patch import JSON_PATCH, patch_type, reject_duplicate_members
from quart_iot.store import Precondition, Saved, Search, StoredConfig, WriteMeta, current_store
from quart_iot.waiting import current_waiting, event_stream_response

blueprint = Blueprint("configs", __name__)
tag_blueprint(blueprint, ["configs"])

READ_ONLY = ["GET", "HEAD", "OPTIONS"]
READ_ONLY_PATHS = {"/api/configs/events", "/api/configs/deleted"}


def is_read_only(path: str) -> bool:
    """`<mac>.json`, the event stream, the deleted list: paths that the `<mac_address>`
    routes match too, for the methods these do not answer."""
    device = path.startswith("/api/configs/") and path.endswith(".json") and path.count("/") == 3
    return device or path in READ_ONLY_PATHS


@blueprint.before_app_request
async def read_only_resources() -> None:
    """PUT, DELETE or POST on a read-only resource is 405, not a bad MAC (or a 415)."""
    if request.method not in READ_ONLY and is_read_only(request.path):
        raise MethodNotAllowed(valid_methods=READ_ONLY)


@blueprint.after_app_request
async def read_only_allow(response: Response) -> Response:
    """OPTIONS on a read-only resource lists only what it answers."""
    if request.method == "OPTIONS" and is_read_only(request.path):
        response.headers["Allow"] = ", ".join(READ_ONLY)
    return response


@blueprint.get("/api/configs")
@validate_querystring(ConfigListQuery)
@document_response(ConfigList)
@document_errors(400, 503)
async def list_configs(query_args: ConfigListQuery) -> Response:
    """List the device configs, sorted by MAC address: every one, or those a filter selects."""
    search = Search.of(query_args.filter, query_args.fields)
    store = current_store()
    body = await (store.list_json() if search is None else store.search_json(search))
    return Response(body, content_type="application/json")


@blueprint.get("/api/configs/<mac_address>")
@document_response(ConfigDetail, headers_model_class=ETagHeader)
@document_errors(400, 404, 422, 503)
async def get_config(mac_address: str) -> Response:
    """Get one device config with its summary fields."""
    return detail_response(await current_store().get(mac_address))


@blueprint.get("/api/configs/events")
@document_response(EventStream)
@document_errors(429, 503)
async def config_events() -> Response:
    """Server-sent events: `saved`/`deleted` per change, `reset` when Last-Event-ID is too old."""
    # A stream ends when its token expires (and at EVENTS_MAX_SECONDS): the client reconnects
    # with a fresh token and Last-Event-ID.
    return event_stream_response(request.headers.get("Last-Event-ID"), token_expiry())


@blueprint.get("/api/configs/<mac_address>.json")
@document_response(DeviceDocument, headers_model_class=ETagHeader)
@document_headers(ConditionalHeaders)
@document_errors(400, 404, 412, 422, 429, 503)
async def get_device_config(mac_address: str) -> Response:
    """The device's document; If-None-Match answers 304, or waits with `Prefer: wait=n`."""
    waiting = current_waiting()
    seconds = waiting.requested_wait()
    waited = 0  # the seconds of a wait that happened, for Preference-Applied
    with waiting.watching(mac_address, seconds) as waiter:  # before the ETag is read
        if request.if_match or request.if_none_match:
            etag = await current_etag_or_none(mac_address)
            if request.if_match and not (
                etag and (request.if_match.star_tag or request.if_match.contains(etag))
            ):
                raise PreconditionFailed(mac_address.lower(), "If-Match")
            if etag and request.if_none_match.contains_weak(etag):
                if not seconds or not await waiting.wait_for_change(waiter, etag, seconds):
                    return preference_applied(not_modified(etag), seconds)
                waited = seconds
        stored = await get_after_wait(mac_address, waited)
    return preference_applied(device_response(stored.raw, stored.etag), waited)


@blueprint.put("/api/configs/<mac_address>")
@validate_request(ConfigSave)
@document_response(ConfigDetail, headers_model_class=SavedHeaders)
@document_headers(ConditionalHeaders)
@document_errors(400, 408, 409, 412, 413, 415, 422, 503)
async def save_config(mac_address: str, data: ConfigSave) -> Response:
    """Create or replace a device config (409 if it exists and allow_overwrite is false; 422
    when it names a device model it does not meet)."""
    saved = await current_store().save(
        mac_address, data.content, precondition(data), WriteMeta(writer_subject())
    )
    return saved_response(saved)


@blueprint.patch("/api/configs/<mac_address>")
@document_request(ConfigPatch)
@document_response(ConfigDetail, headers_model_class=SavedHeaders)
@document_headers(ConditionalHeaders)
@document_errors(400, 404, 408, 409, 412, 413, 415, 422, 503)
async def patch_config(mac_address: str) -> Response:
    """Change part of a device config: a JSON merge patch (RFC 7396) or a JSON Patch (RFC
    6902), by Content-Type; the result is saved as a PUT saves it. Never creates (404)."""
    mimetype = patch_type(request.mimetype)  # 415 with Accept-Patch before the body is read
    patch = await request.get_json()
    if mimetype == JSON_PATCH:
        data = await request.get_data(as_text=False)
        reject_duplicate_members(data.encode() if isinstance(data, str) else data)
    meta = WriteMeta(writer_subject())
    return saved_response(
        await current_store().patch(mac_address, mimetype, patch, precondition(), meta)
    )


@blueprint.delete("/api/configs/<mac_address>")
@document_response(None, 204)  # documented as "No content" by our OpenAPI provider
@document_headers(ConditionalHeaders)
@document_errors(400, 404, 412, 503)
async def delete_config(mac_address: str) -> tuple[str, int]:
    """Delete a device config."""
    await current_store().delete(mac_address, precondition(), WriteMeta(writer_subject()))
    return "", 204


def precondition(data: ConfigSave | None = None) -> Precondition:
    """The write condition from allow_overwrite and the If-Match/If-None-Match headers."""
    return Precondition(
        overwrite=data.allow_overwrite if data else True,
        if_match=request.if_match,
        if_none_match=request.if_none_match,
    )


def detail_response(stored: StoredConfig) -> Response:
    """Detail from the cached list item and the stored bytes: no model, nothing re-encoded."""
    response = Response(stored.detail_json(), content_type="application/json")
    response.set_etag(stored.etag)
    return response


def saved_response(saved: Saved) -> Response:
    """What a save made current; `Config-Unchanged: true` when it held these bytes already."""
    response = detail_response(saved.stored)
    if saved.unchanged:
        response.headers["Config-Unchanged"] = "true"
    if saved.schema_violations:  # a restore of a document that does not meet its model
        response.headers["Schema-Violations"] = saved.schema_violations
    return response


def device_response(body: bytes, etag: str) -> Response:
    response = Response(body, content_type="application/json")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    return response


def not_modified(etag: str) -> Response:
    """A 304: the validators a 200 would carry, and no Content-Length (RFC 9110 8.6, 15.4.5)."""
    response = device_response(b"", etag)
    response.status_code = 304
    del response.headers["Content-Length"]
    del response.headers["Content-Type"]
    return response


async def current_etag_or_none(mac: str) -> str | None:
    """The document's ETag, or None when there is no usable document (conditions fail on it)."""
    try:
        return await current_store().current_etag(mac)
    except (ConfigNotFound, ConfigUnreadable):
        return None


async def get_after_wait(mac: str, seconds: int) -> StoredConfig:
    """The document; after a wait, its 404 says that it waited too."""
    try:
        return await current_store().get(mac)
    except ApiError as error:
        if seconds:
            error.headers = {**(error.headers or {}), "Preference-Applied": f"wait={seconds}"}
        raise


def preference_applied(response: Response, seconds: int | None) -> Response:
    if seconds:
        response.headers["Preference-Applied"] = f"wait={seconds}"
    return response
