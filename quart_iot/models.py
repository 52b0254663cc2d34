"""Request and response models at the HTTP edge, each built in one place."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool

MAC_PATTERN = r"[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}"  # published in the OpenAPI document
# `<ns since the epoch, 19 digits>-<8 hex>`: ids sort in time order as strings.
VERSION_PATTERN = r"[0-9]{19}-[0-9a-f]{8}"
HISTORY_PAGE = 50  # versions per history page unless `?limit=` says (HISTORY_MAX_VERSIONS')
HISTORY_PAGE_MAX = 1000
StorageState = Literal["read-write", "read-only", "writes-blocked", "unavailable"]
MqttState = Literal["connected", "disconnected", "disabled"]


class ConfigSummary(BaseModel):
    """One device in the list."""

    mac_address: str = Field(examples=["aa-bb-cc-dd-ee-ff"])
    device_name: str | None
    device_entity_id: str | None
    enable_ota: bool | None


class ConfigDetail(ConfigSummary):
    """One device's config: its summary and the document as saved."""

    content: dict[str, Any]


class ConfigList(BaseModel):
    """Every usable config, sorted by MAC address."""

    configs: list[ConfigSummary]
    count: int


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
