"""The device model routes: the models with their device counts, one model, its save and
delete, and the devices that do not meet its schema now."""

from quart import Blueprint, Response, request
from quart_schema import document_headers, document_response, tag_blueprint, validate_request

from quart_iot.apidocs import document_errors
from quart_iot.blueprints.configs import not_modified, precondition
from quart_iot.blueprints.history import json_response
from quart_iot.models import (
    ConditionalHeaders,
    DeviceModelDetail,
    DeviceModelList,
    DeviceModelSave,
    DeviceModelViolations,
    ETagHeader,
)
from quart_iot.oidc import writer_subject
from quart_iot.store import ModelEntry, ModelReport, WriteMeta, current_store

blueprint = Blueprint("models", __name__)
tag_blueprint(blueprint, ["models"])

MODEL = "/api/models/<code>"


@blueprint.get("/api/models")
@document_response(DeviceModelList)
@document_errors(503)
async def list_models() -> Response:
    """Every device model, sorted by code, each with how many device configs name it."""
    models = [entry.summary() for entry in await current_store().models()]
    return json_response({"models": models, "count": len(models)})


@blueprint.get(MODEL)
@document_response(DeviceModelDetail, headers_model_class=ETagHeader)
@document_headers(ConditionalHeaders)
@document_errors(400, 404, 422, 503)
async def get_model(code: str) -> Response:
    """One device model with its configSchema; If-None-Match answers 304."""
    entry = await current_store().model(code)
    if request.if_none_match.contains_weak(entry.stored.etag):
        return not_modified(entry.stored.etag)
    return detail_response(entry)


@blueprint.put(MODEL)
@validate_request(DeviceModelSave)
@document_response(DeviceModelDetail, headers_model_class=ETagHeader)
@document_headers(ConditionalHeaders)
@document_errors(400, 408, 412, 413, 415, 422, 503)
async def save_model(code: str, data: DeviceModelSave) -> Response:
    """Create or replace a device model (422 INVALID_SCHEMA when configSchema is not a valid
    JSON Schema, draft 2020-12, resolving only inside itself). Devices are never rewritten."""
    saved = await current_store().save_model(
        code, data.name, data.config_schema, precondition(), WriteMeta(writer_subject())
    )
    return detail_response(ModelEntry(saved.stored, saved.devices))


@blueprint.delete(MODEL)
@document_response(None, 204)
@document_headers(ConditionalHeaders)
@document_errors(400, 404, 409, 412, 503)
async def delete_model(code: str) -> tuple[str, int]:
    """Delete a device model (409 MODEL_IN_USE while device configs name it)."""
    await current_store().delete_model(code, precondition(), WriteMeta(writer_subject()))
    return "", 204


@blueprint.get(f"{MODEL}/violations")
@document_response(DeviceModelViolations)
@document_errors(400, 404, 422, 503)
async def model_violations(code: str) -> Response:
    """The device configs naming this model that do not meet its configSchema now."""
    return json_response(report_json(await current_store().model_report(code)))


def detail_response(entry: ModelEntry) -> Response:
    response = json_response(entry.detail())
    response.set_etag(entry.stored.etag)
    return response


def report_json(report: ModelReport) -> dict[str, object]:
    devices = [
        {
            "mac_address": device.mac,
            "device_name": device.device_name,
            "violations": device.violations.as_json(),
            "truncated": device.violations.truncated,
        }
        for device in report.devices
    ]
    return {
        "code": report.code,
        "checked": report.checked,
        "devices": devices,
        "count": len(devices),
    }
