"""Request and response models at the HTTP edge, each built in one place."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool

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


class DeviceDocument(RootModel[dict[str, Any]]):
    """The stored document, byte for byte as saved."""


class ETagHeader(BaseModel):
    """The strong ETag of the stored document."""

    model_config = ConfigDict(populate_by_name=True)

    etag: str = Field(alias="ETag", description="Strong ETag of the stored document")


class ConditionalHeaders(BaseModel):
    """Optimistic concurrency: send the ETag you read, or `*`."""

    if_match: str | None = Field(default=None, alias="If-Match")
    if_none_match: str | None = Field(default=None, alias="If-None-Match")
