"""The bulk change routes (issue 21): a change over the devices a filter selects, its record,
the recent ones, and a revert. `/api/configs/changes` sits beside `/api/configs/<mac_address>`:
a static path, so the router prefers it, and no MAC is ever `changes`."""

import re

from quart import Blueprint, Response, request
from quart_schema import (
    document_request,
    document_response,
    tag_blueprint,
    validate_querystring,
    validate_request,
)
from werkzeug.exceptions import MethodNotAllowed

from quart_iot.apidocs import document_errors
from quart_iot.errors import ApiError, InvalidBody, InvalidChangeId, InvalidPath
from quart_iot.identifiers import VERSION_PATTERN
from quart_iot.models import (
    ChangeList,
    ChangeListQuery,
    ChangeRecord,
    ChangeRequest,
    ChangeResult,
    ChangeSummary,
    RevertRequest,
)
from quart_iot.oidc import writer_subject
from quart_iot.store import WriteMeta, bulkchanges, current_store

blueprint = Blueprint("changes", __name__)
tag_blueprint(blueprint, ["changes"])

CHANGES = "/api/configs/changes"
ALLOWED = frozenset({"GET", "HEAD", "OPTIONS", "POST"})
_ID_LENGTH = 28
_CHANGE_ID = re.compile(VERSION_PATTERN)  # ids are made as version ids are (bulk.new_change_id)


@blueprint.before_app_request
async def not_a_device() -> None:
    """PUT, PATCH or DELETE on /api/configs/changes is 405, not a bad MAC (the `<mac_address>`
    routes match the path too)."""
    if request.path == CHANGES and request.method not in ALLOWED:
        raise MethodNotAllowed(valid_methods=sorted(ALLOWED))


@blueprint.post(CHANGES)
@validate_request(ChangeRequest)
@document_response(ChangeResult)
@document_errors(400, 422, 503)
async def make_change(data: ChangeRequest) -> Response:
    """Apply a JSON merge patch to every device the filter selects, each device its own
    conditional write (`conflict`: written by someone else meanwhile, left alone), validated
    against its model (`invalid`); `dryRun` writes nothing and shows each diff. More than
    MAX_BULK_DEVICES selected: 422 TOO_MANY_DEVICES, nothing written."""
    store = current_store()
    if data.dryRun:
        plans, violations = await bulkchanges.plan(
            store, data.filter, data.patch, store.max_bulk_devices
        )
        return _json(ChangeResult.dry_run(plans, violations))
    subject = writer_subject()
    done = await store.carry_out(
        CHANGES,
        WriteMeta(subject),
        lambda: bulkchanges.change(store, data.filter, data.patch, data.comment, subject),
    )
    return _json(ChangeResult.of(done))


@blueprint.get(CHANGES)
@validate_querystring(ChangeListQuery)
@document_response(ChangeList)
@document_errors(400, 503)
async def list_changes(query_args: ChangeListQuery) -> Response:
    """The recent bulk changes and reverts, newest first, a page at a time."""
    store = current_store()
    found = await bulkchanges.recent(store, query_args.limit + 1, query_args.before)
    page = found[: query_args.limit]
    summaries = [ChangeSummary.from_journal(journal) for journal in page]
    cursor = page[-1].change_id if len(found) > query_args.limit else None
    return _json(ChangeList(changes=summaries, count=len(summaries), next=cursor))


@blueprint.get(f"{CHANGES}/<change_id>")
@document_response(ChangeRecord)
@document_errors(400, 404, 503)
async def get_change(change_id: str) -> Response:
    """A change: who, when, why, its filter and patch, and each device's outcome."""
    journal = await bulkchanges.record(current_store(), checked(change_id))
    return _json(ChangeRecord.of(journal))


@blueprint.post(f"{CHANGES}/<change_id>/revert")
@document_request(RevertRequest)
@document_response(ChangeResult)
@document_errors(400, 404, 409, 422, 503)
async def revert_change(change_id: str) -> Response:
    """Put each device the change wrote back to its version before the change, if it is still
    at the version the change wrote (`conflict` for the others); itself a new change."""
    body = await _revert_body()
    store, subject, change_id = current_store(), writer_subject(), checked(change_id)
    done = await store.carry_out(
        f"{CHANGES}/{change_id}/revert",
        WriteMeta(subject),
        lambda: bulkchanges.revert(store, change_id, subject, body.comment),
    )
    return _json(ChangeResult.of(done))


async def _revert_body() -> RevertRequest:
    """The optional body: none, or `{"comment"}`."""
    data = await request.get_data(as_text=False)
    if not data:
        return RevertRequest()
    payload = await request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise InvalidBody('The body must be a JSON object: {"comment": "..."}')
    try:
        return RevertRequest.model_validate(payload)
    except ValueError as error:
        raise InvalidBody(f"Invalid revert body: {error}") from None


def checked(change_id: str) -> str:
    """The change id, or 400 for anything that is not one."""
    if len(change_id) != _ID_LENGTH or not _CHANGE_ID.fullmatch(change_id):
        raise InvalidChangeId
    return change_id


def changes_path_error(parts: list[str]) -> ApiError:
    """The error for a path under /api/configs/changes/ that no route takes."""
    try:
        checked(parts[0] if parts else "")
    except InvalidChangeId as error:
        return error
    return InvalidPath("Invalid path: a bulk change has nothing but /revert under it")


def _json(model: ChangeResult | ChangeRecord | ChangeList) -> Response:
    # Unset: left out (a `remove` operation has no `value`; `diff` only in a dry run).
    return Response(model.model_dump_json(exclude_unset=True), content_type="application/json")
