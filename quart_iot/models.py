"""Request and response models at the HTTP edge, each built in one place."""

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool

from quart_iot.bulk import DevicePlan, Journal, planned_status
from quart_iot.identifiers import VERSION_PATTERN
from quart_iot.validation import MODEL_CODE_PATTERN

HISTORY_PAGE = 50  # versions per history page unless `?limit=` says (HISTORY_MAX_VERSIONS')
HISTORY_PAGE_MAX = 1000
StorageState = Literal["read-write", "read-only", "writes-blocked", "unavailable"]
MqttState = Literal["connected", "disconnected", "disabled"]


class ConfigSummary(BaseModel):
    """One device in the list."""

    mac_address: str = Field(examples=["aa-bb-cc-dd-ee-ff"])
    device_name: str | None
    device_model: str | None = Field(
        description="The document's top-level `deviceModel` (null when missing or not a string)"
    )
    device_entity_id: str | None
    enable_ota: bool | None


class ConfigDetail(ConfigSummary):
    """One device's config: its summary and the document as saved."""

    content: dict[str, Any]


class ConfigListEntry(ConfigSummary):
    """One device in the list; with `fields=`, the values asked for."""

    fields: dict[str, Any] | None = Field(
        default=None,
        description="Only with `fields=`: each property asked for, keyed as written, with the "
        "device's value there (an object or array whole), null where it has none",
        examples=[{"mqtt/host": "broker.lan", "enableOTA": True}],
    )


class ConfigList(BaseModel):
    """Every usable config (or those the filter selects), sorted by MAC address."""

    configs: list[ConfigListEntry]
    count: int


class ConfigListQuery(BaseModel):
    """Fleet search: which devices the list holds, and which of their values it shows.
    Without either, the list of every device, as ever; other parameters are ignored."""

    filter: str | None = Field(
        default=None,
        description="An RQL filter (a subset of Eclipse Ditto's; docs/API.md, \"Searching the "
        'fleet"): only the devices it selects are listed. Malformed: 400 INVALID_FILTER, with '
        "the position of the error in `details`",
        examples=['and(eq(deviceModel,"relay_board"),ne(mqtt/host,"broker.lan"))'],
    )
    fields: str | None = Field(
        default=None,
        description="Comma-separated properties (`mqtt/host,enableOTA`, `mac_address`): each "
        "entry gains a `fields` object with their values. Malformed: 400 INVALID_FIELDS",
        examples=["mqtt/host,enableOTA"],
    )


class ConfigSave(BaseModel):
    """The PUT body; unknown fields are rejected so a misspelt flag cannot overwrite."""

    model_config = ConfigDict(extra="forbid")

    content: dict[str, Any]
    allow_overwrite: StrictBool = True


class Health(BaseModel):
    """Readiness: whether the configs directory can be used."""

    status: Literal["healthy", "unhealthy"]
    reason: str | None = None
    storage: StorageState
    mqtt: MqttState | None = Field(
        default=None, description="Change notifications; information only, never unhealthy"
    )


class Liveness(BaseModel):
    """Liveness: the process serves requests."""

    status: Literal["alive"] = "alive"


class ErrorBody(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(populate_by_name=True)

    error: str
    code: str
    details: dict[str, Any] | None
    correlation_id: str = Field(alias="correlationId")
    status: int = Field(description="The HTTP status of the response, as in RFC 9457")


class EventStream(RootModel[str]):
    """Server-sent events (`text/event-stream`): `saved`, `deleted`, `reset`, keep-alives."""


class DeviceDocument(RootModel[dict[str, Any]]):
    """The stored document, byte for byte as saved."""


class ETagHeader(BaseModel):
    """The strong ETag of the stored document."""

    model_config = ConfigDict(populate_by_name=True)

    etag: str = Field(alias="ETag", description="Strong ETag of the stored document")


class SavedHeaders(ETagHeader):
    """The ETag of the document the write made current, and whether it changed anything."""

    config_unchanged: str = Field(
        default="true",
        alias="Config-Unchanged",
        description="Sent (`true`) only when the document held these very bytes already: "
        "nothing was written and no history version was kept",
    )


class RestoredHeaders(SavedHeaders):
    """A restore's headers: as a save's, and whether the restored document meets its model."""

    schema_violations: str = Field(
        default="3",
        alias="Schema-Violations",
        description="Sent only when the restored document does not meet its device model "
        "(restores are not refused by validation): the number of violations (at most 50 "
        "counted), or `unknown-model` when it names a model that is not defined",
    )


class ConditionalHeaders(BaseModel):
    """Optimistic concurrency: send the ETag you read, or `*`."""

    if_match: str | None = Field(default=None, alias="If-Match")
    if_none_match: str | None = Field(default=None, alias="If-None-Match")


class HistoryVersion(ConfigSummary):
    """One kept version of a device's document, with that version's summary fields."""

    version: str = Field(examples=["1767225600000000000-0a1b2c3d"])
    etag: str = Field(description="Strong ETag of that version (unquoted)")
    saved_at: datetime = Field(description="When the version was kept (RFC 3339, UTC)")
    size: int = Field(description="Bytes of the stored document")
    change: Literal["created", "updated", "deleted"] = Field(
        description="created/updated: the version a write made current; deleted: the document "
        "a DELETE removed"
    )
    subject: str | None = Field(
        description="Who made this version: the `sub` of the writer's token (for a deleted one, "
        "of whoever deleted it); null when access control was off or the file was edited "
        "outside the service"
    )
    changeId: str | None = Field(  # noqa: N815 - the issue's name
        default=None,
        description="The bulk change that wrote this version (GET /api/configs/changes/<id>); "
        "null for a write of its own",
    )


class HistoryList(BaseModel):
    """A page of one device's kept versions, newest first."""

    mac_address: str
    versions: list[HistoryVersion]
    count: int = Field(description="The versions on this page")
    next: str | None = Field(
        description="The cursor of the next (older) page: pass it as `?before=`; null on the "
        "last page"
    )


class HistoryQuery(BaseModel):
    """Which page: at most `limit` versions, older than the version `before` (a cursor)."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=HISTORY_PAGE, ge=1, le=HISTORY_PAGE_MAX)
    before: str | None = Field(
        default=None,
        pattern=f"^{VERSION_PATTERN}$",
        description="A version id: the page holds versions older than it",
    )


class DeletedConfig(HistoryVersion):
    """A device whose document is gone, and the last version its history keeps."""

    deleted_at: datetime | None = Field(
        description="When it was deleted (null: its file vanished outside the service)"
    )


class DeletedList(BaseModel):
    """Devices whose document is gone but whose history remains, sorted by MAC address."""

    configs: list[DeletedConfig]
    count: int


class PatchOperation(BaseModel):
    """One RFC 6902 operation."""

    op: Literal["add", "remove", "replace"]
    path: str = Field(description="JSON Pointer (RFC 6901)")
    value: Any = None


class JsonPatch(RootModel[list[PatchOperation]]):
    """An RFC 6902 JSON Patch: applied to the first version, it gives the second."""


class DiffQuery(BaseModel):
    """The version to compare with (default: the current document)."""

    model_config = ConfigDict(extra="forbid")

    to: str | None = None


# -- device models (issue 20): the bodies and answers of /api/models and PATCH -----------------

ModelCode = Annotated[
    str,
    Field(
        pattern=f"^{MODEL_CODE_PATTERN}$",
        examples=["esp32_devkitc"],
        description="The model's code",
    ),
]


class DeviceModelSave(BaseModel):
    """The PUT body of a device model. Both fields are required (configSchema may be null), so
    a PUT that forgets the schema cannot drop it; unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["ESP32-DevKitC node"])
    config_schema: dict[str, Any] | None = Field(
        alias="configSchema",
        description="A JSON Schema (draft 2020-12) that every config naming this model in its "
        "top-level `deviceModel` must meet; null: no validation. `$ref`s resolve only inside it.",
    )


class DeviceModelSummary(BaseModel):
    """One device model in the list."""

    code: ModelCode
    name: str
    has_schema: bool = Field(description="Whether configSchema is set (not null)")
    device_count: int = Field(description="Device configs whose `deviceModel` names this model")


class DeviceModelDetail(DeviceModelSummary):
    """One device model: its summary and its configSchema."""

    model_config = ConfigDict(populate_by_name=True)

    config_schema: dict[str, Any] | None = Field(alias="configSchema")


class DeviceModelList(BaseModel):
    """Every device model, sorted by code."""

    models: list[DeviceModelSummary]
    count: int


class DeviceModelViolation(BaseModel):
    """One way a document breaks its model's schema (or a schema breaks the meta-schema)."""

    path: str = Field(
        examples=["/mqtt/port"], description="JSON Pointer (RFC 6901) to the offending value"
    )
    keyword: str = Field(examples=["type"], description="The JSON Schema keyword it fails")
    message: str = Field(examples=['"1883x" is not of type "integer"'])


class DeviceModelNonconforming(BaseModel):
    """A device whose document does not meet its model's schema as it is now."""

    mac_address: str = Field(examples=["aa-bb-cc-dd-ee-ff"])
    device_name: str | None
    violations: list[DeviceModelViolation] = Field(description="At most 50")
    truncated: bool = Field(description="There were more than 50")


class DeviceModelViolations(BaseModel):
    """The devices naming a model whose documents do not meet its schema now, by MAC."""

    code: ModelCode
    checked: int = Field(description="Device configs naming the model")
    devices: list[DeviceModelNonconforming]
    count: int


# RFC 6901: "" (the whole document) or "/"-prefixed reference tokens, `~` escaped as ~0, ~1.
POINTER = r"^(/([^/~]|~[01])*)*$"
MEMBER = r"^(/([^/~]|~[01])*)+$"  # a pointer below the whole document


def _pointer(description: str, pattern: str = POINTER) -> Any:
    return Field(pattern=pattern, description=description, examples=["/mqtt/port"])


class _Operation(BaseModel):
    """An RFC 6902 operation (members it does not define are ignored)."""

    path: str = _pointer("JSON Pointer (RFC 6901); array indexes have no leading zero")


class AddOperation(_Operation):
    """Add a value (or replace a member); `-` as the last token appends to an array."""

    op: Literal["add"]
    value: Any = Field(description="Any JSON value (null is a value)")


class RemoveOperation(_Operation):
    """Remove the value at `path` (never the whole document)."""

    op: Literal["remove"]
    path: str = _pointer("JSON Pointer (RFC 6901) of a member or element", MEMBER)


class ReplaceOperation(_Operation):
    """Replace the value at `path`, which must exist."""

    op: Literal["replace"]
    value: Any = Field(description="Any JSON value (null is a value)")


class MoveOperation(_Operation):
    """Move the value at `from` to `path` (not into one of its own members)."""

    model_config = ConfigDict(populate_by_name=True)

    op: Literal["move"]
    from_: str = Field(alias="from", pattern=MEMBER, description="JSON Pointer: the source")


class CopyOperation(_Operation):
    """Copy the value at `from` to `path`."""

    model_config = ConfigDict(populate_by_name=True)

    op: Literal["copy"]
    from_: str = Field(alias="from", pattern=POINTER, description="JSON Pointer: the source")


class TestOperation(_Operation):
    """Fail the whole patch (409) unless the value at `path` equals `value`."""

    op: Literal["test"]
    value: Any = Field(description="Compared as RFC 6902 4.6 says (1 equals 1.0)")


JsonPatchRequestOperation = Annotated[
    AddOperation
    | RemoveOperation
    | ReplaceOperation
    | MoveOperation
    | CopyOperation
    | TestOperation,
    Field(discriminator="op"),
]


class JsonPatchRequest(RootModel[list[JsonPatchRequestOperation]]):
    """`application/json-patch+json` (RFC 6902): operations applied in order, all or none."""


class MergePatchRequest(RootModel[dict[str, Any]]):
    """`application/merge-patch+json` (RFC 7396): members to set; null removes a member."""


class ConfigPatch(RootModel[dict[str, Any] | list[JsonPatchRequestOperation]]):
    """A PATCH body: a MergePatchRequest or a JsonPatchRequest, as its Content-Type says (the
    OpenAPI document shows each under its media type)."""


# -- fleet search and bulk changes (issue 21) --------------------------------------------------
# Field names as the issue gives them (`changeId`, `dryRun`): the change's own fields are
# camelCase, each device's snake_case like the list's entries.

ChangeStatus = Literal["changed", "unchanged", "conflict", "invalid", "not_applied"]


class ChangeRequest(BaseModel):
    """A bulk change: a JSON merge patch (RFC 7396) for every device the filter selects."""

    model_config = ConfigDict(extra="forbid")

    filter: str = Field(examples=['and(eq(deviceModel,"relay_board"),ne(mqtt/host,"broker.lan"))'])
    patch: dict[str, Any] = Field(examples=[{"mqtt": {"host": "broker.lan"}}])
    dryRun: StrictBool = Field(  # noqa: N815 - the issue's name
        default=False, description="Write nothing; each device's entry shows its diff"
    )
    comment: str | None = Field(default=None, max_length=1000)


class Violation(BaseModel):
    """Where a document breaks its model's schema."""

    path: str = Field(description="JSON Pointer (RFC 6901) to the value")
    keyword: str = Field(description="The JSON Schema keyword that failed")
    message: str


class DeviceChange(BaseModel):
    """One device's outcome in a change: `changed` (written), `unchanged` (nothing to write),
    `conflict` (written by someone else after the change read it, or gone: left alone),
    `invalid` (the result breaks the device's model: left alone), `not_applied` (the change
    was interrupted before this device)."""

    mac_address: str
    status: ChangeStatus
    etag: str | None = Field(
        description="changed: the ETag written (in a dry run, the one it would write); "
        "unchanged, invalid: the device's; conflict: the other writer's (null: deleted)"
    )
    violations: list[Violation] | None = Field(default=None, description="invalid only")
    diff: list[PatchOperation] | None = Field(
        default=None, description="Dry run only: the RFC 6902 diff the change would make"
    )


def _planned(plan: DevicePlan, violations: list[dict[str, Any]] | None) -> DeviceChange:
    """A dry run's entry: what the change would do, and its diff."""
    status = planned_status(plan, violations) or "changed"
    return DeviceChange(
        mac_address=plan.mac,
        status=status,
        etag=plan.etag_after if status == "changed" else plan.etag_before,
        violations=[Violation(**v) for v in violations] if violations else None,
        diff=[PatchOperation(**operation) for operation in plan.diff],
    )


class ChangeResult(BaseModel):
    """The answer to a bulk change or a revert: one entry per device the filter selected."""

    changeId: str | None = Field(  # noqa: N815 - the issue's name
        description="The change's id in the history (null for a dry run, which is not kept)"
    )
    dryRun: bool  # noqa: N815 - the issue's name
    devices: list[DeviceChange]
    count: int

    @classmethod
    def dry_run(
        cls, plans: list[DevicePlan], violations: Mapping[str, list[dict[str, Any]]] | None = None
    ) -> "ChangeResult":
        """What a change would do (`violations` by MAC: results that break their model)."""
        devices = [_planned(plan, (violations or {}).get(plan.mac)) for plan in plans]
        return cls(changeId=None, dryRun=True, devices=devices, count=len(devices))

    @classmethod
    def of(cls, journal: Journal) -> "ChangeResult":
        """The answer of a change once its journal is complete."""
        devices = ChangeRecord.of(journal).devices
        return cls(changeId=journal.change_id, dryRun=False, devices=devices, count=len(devices))


class ChangeSummary(BaseModel):
    """A change as the list of recent changes shows it."""

    changeId: str  # noqa: N815 - the issue's name
    state: Literal["running", "completed", "interrupted"] = Field(
        description="interrupted: the process stopped during the change; each device's "
        "status says whether the change wrote it (changed) or not (not_applied)"
    )
    createdAt: datetime  # noqa: N815
    completedAt: datetime | None  # noqa: N815
    subject: str | None = Field(description="Who made the change (the token's subject)")
    comment: str | None
    filter: str
    patch: dict[str, Any] | None = Field(description="null for a revert")
    revertOf: str | None = Field(description="The change this one reverts")  # noqa: N815
    counts: dict[ChangeStatus, int] = Field(description="Devices by status")

    @classmethod
    def from_journal(cls, journal: Journal, **extra: Any) -> Self:
        """Built from the journal a store keeps."""
        counts: dict[ChangeStatus, int] = {}
        for entry in journal.devices:
            if entry.status is not None:
                counts[entry.status] = counts.get(entry.status, 0) + 1
        return cls(
            changeId=journal.change_id,
            state=journal.state,
            createdAt=journal.created_at,
            completedAt=journal.completed_at,
            subject=journal.subject,
            comment=journal.comment,
            filter=journal.filter,
            patch=journal.patch,
            revertOf=journal.revert_of,
            counts=counts,
            **extra,
        )


class ChangeRecord(ChangeSummary):
    """A change: who, when, why, what, and each device's outcome."""

    devices: list[DeviceChange]

    @classmethod
    def of(cls, journal: Journal) -> "ChangeRecord":
        """Built from the journal a store keeps (a running change's undecided devices are
        left out until decided)."""
        devices = [
            DeviceChange(
                mac_address=entry.mac,
                status=entry.status,
                etag=entry.etag,
                violations=[Violation(**v) for v in entry.violations] if entry.violations else None,
            )
            for entry in journal.devices
            if entry.status is not None
        ]
        return cls.from_journal(journal, devices=devices)


class ChangeList(BaseModel):
    """Recent changes, newest first."""

    changes: list[ChangeSummary]
    count: int = Field(description="The changes on this page")
    next: str | None = Field(
        description="The cursor of the next (older) page: pass it as `?before=`; null on the "
        "last page"
    )


CHANGES_PAGE = 20
CHANGES_PAGE_MAX = 100


class ChangeListQuery(BaseModel):
    """Which page of the recent changes: at most `limit`, older than change `before`."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=CHANGES_PAGE, ge=1, le=CHANGES_PAGE_MAX)
    before: str | None = Field(
        default=None,
        pattern=f"^{VERSION_PATTERN}$",
        description="A change id: the page holds changes older than it",
    )


class RevertRequest(BaseModel):
    """A revert's body (optional): why."""

    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=1000)
