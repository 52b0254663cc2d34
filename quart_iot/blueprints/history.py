"""The history routes: every kept version of a device, one version, a diff, a restore, and
the deleted devices."""

import json
from typing import Any

from quart import Blueprint, Response, request
from quart_schema import document_headers, document_response, tag_blueprint, validate_querystring
from werkzeug.exceptions import NotFound

from quart_iot.apidocs import document_errors
from quart_iot.blueprints.changes import changes_path_error
from quart_iot.blueprints.configs import detail_response, precondition, saved_response
from quart_iot.errors import ApiError, InvalidPath, handle_api_error, handle_http_error
from quart_iot.models import (
    ConditionalHeaders,
    ConfigDetail,
    DeletedList,
    DiffQuery,
    ETagHeader,
    HistoryList,
    HistoryQuery,
    JsonPatch,
    RestoredHeaders,
)
from quart_iot.oidc import writer_subject
from quart_iot.store import WriteMeta, canonical_mac, current_store
from quart_iot.store.records import check_version

blueprint = Blueprint("history", __name__)
tag_blueprint(blueprint, ["history"])

CONFIGS = "/api/configs/"
VERSION = "/api/configs/<mac_address>/history/<version>"
DELETED = "/api/configs/deleted"


@blueprint.get(DELETED)
@document_response(DeletedList)
@document_errors(503)
async def list_deleted() -> Response:
    """Devices whose document was deleted but whose history remains, sorted by MAC address."""
    configs = await current_store().deleted()
    return json_response({"configs": configs, "count": len(configs)})


@blueprint.get("/api/configs/<mac_address>/history")
@validate_querystring(HistoryQuery)
@document_response(HistoryList)
@document_errors(400, 404, 422, 503)
async def list_versions(mac_address: str, query_args: HistoryQuery) -> Response:
    """A page of one device's kept versions, newest first (also after it was deleted)."""
    body = await current_store().versions_json(mac_address, query_args.limit, query_args.before)
    return Response(body, content_type="application/json")


@blueprint.get(VERSION)
@document_response(ConfigDetail, headers_model_class=ETagHeader)
@document_errors(400, 404, 422, 503)
async def get_version(mac_address: str, version: str) -> Response:
    """One kept version, as a Detail with its ETag."""
    return detail_response(await current_store().version(mac_address, version))


@blueprint.get(f"{VERSION}/diff")
@validate_querystring(DiffQuery)
@document_response(JsonPatch)
@document_errors(400, 404, 422, 503)
async def diff_version(mac_address: str, version: str, query_args: DiffQuery) -> Response:
    """RFC 6902 JSON Patch from this version to the current document (or to `?to=`)."""
    patch = await current_store().diff(mac_address, version, query_args.to)
    return json_response(patch)


@blueprint.post(f"{VERSION}/restore")
@document_response(ConfigDetail, headers_model_class=RestoredHeaders)
@document_headers(ConditionalHeaders)
@document_errors(400, 404, 412, 413, 422, 503)
async def restore_version(mac_address: str, version: str) -> Response:
    """Make this version current through the normal write path (If-Match honoured); never
    refused by validation: `Schema-Violations` says when it does not meet its model."""
    meta = WriteMeta(writer_subject())
    saved = await current_store().restore(mac_address, version, precondition(), meta)
    return saved_response(saved)


def json_response(body: Any) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(data, content_type="application/json")


@blueprint.app_errorhandler(NotFound)
async def unknown_path(error: NotFound) -> Response:
    """A path under /api/configs/ that no route takes (an encoded slash or `..` splits a MAC or
    a version into more segments) is a bad identifier: 400, naming the part that is wrong."""
    if not request.path.startswith(CONFIGS):
        return await handle_http_error(error)
    return await handle_api_error(wrong_part(request.path.removeprefix(CONFIGS).split("/")))


def wrong_part(parts: list[str]) -> ApiError:
    """The error for the first of the path's parts (after /api/configs/) that is wrong."""
    if parts[0] == "changes":  # /api/configs/changes/<change_id>[/revert]
        return changes_path_error(parts[1:])
    try:
        mac = canonical_mac(parts[0])
        if parts[1:2] != ["history"]:
            return InvalidPath(f"Invalid path: config {mac} has nothing but /history under it")
        check_version(parts[2] if len(parts) > 2 else "")
    except ApiError as error:
        return error
    return InvalidPath(
        f"Invalid path: a version of config {mac} has nothing but /diff and /restore under it"
    )
