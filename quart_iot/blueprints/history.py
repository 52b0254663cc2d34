"""The history routes: every kept version of a device, one version, a diff, a restore, and
the deleted devices."""

import json
from typing import Any

from quart import Blueprint, Response
from quart_schema import document_headers, document_response, tag_blueprint, validate_querystring

from quart_iot.apidocs import document_errors
from quart_iot.blueprints.configs import detail_response, precondition, saved_response
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
from quart_iot.store import WriteMeta, current_store

blueprint = Blueprint("history", __name__)
tag_blueprint(blueprint, ["history"])

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
