import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError
from quart import Quart

from quart_iot.errors import (
    ApiError,
    InvalidModelCode,
    InvalidSchema,
    ModelInUse,
    ModelNotFound,
    PatchConflict,
    SchemaViolation,
    UnknownModel,
    UnsupportedPatchType,
    error_response,
)
from quart_iot.models import (
    DeviceModelDetail,
    DeviceModelSave,
    DeviceModelSummary,
    DeviceModelViolation,
    JsonPatchRequest,
    MoveOperation,
)
from quart_iot.patch import JSON_PATCH, check_patch
from quart_iot.validation import (
    MAX_MESSAGE,
    MAX_VIOLATIONS,
    SchemaCache,
    check_schema,
    conform,
    model_code,
    model_of,
    violations,
)
from tests.esp32_schema import (
    INVALID_VIOLATIONS,
    MODEL_CODE,
    esp32_device,
    esp32_invalid_device,
    esp32_schema,
    large_esp32_device,
)


def found(schema: dict[str, Any], content: Any) -> list[tuple[str, str]]:
    return [(v.path, v.keyword) for v in violations(check_schema(schema), content).items]


def test_the_esp32_device_conforms_to_its_model() -> None:
    compiled = check_schema(esp32_schema())
    assert not violations(compiled, esp32_device())
    assert not violations(compiled, large_esp32_device())
    conform(compiled, MODEL_CODE, esp32_device())


def test_every_violation_is_reported_with_its_pointer_and_keyword() -> None:
    compiled = check_schema(esp32_schema())
    result = violations(compiled, esp32_invalid_device())
    assert [(v.path, v.keyword) for v in result.items] == INVALID_VIOLATIONS
    assert not result.truncated
    by_path = {v.path: v.message for v in result.items}
    assert "1883x" in by_path["/mqtt/port"]
    assert "integer" in by_path["/mqtt/port"]
    assert "prot" in next(v.message for v in result.items if v.keyword == "additionalProperties")


def test_a_document_that_does_not_conform_is_a_422_with_its_violations() -> None:
    with pytest.raises(SchemaViolation) as raised:
        conform(check_schema(esp32_schema()), MODEL_CODE, esp32_invalid_device())
    error = raised.value
    assert (error.status, error.code) == (422, "SCHEMA_VIOLATION")
    assert error.details is not None
    assert error.details["deviceModel"] == MODEL_CODE
    assert [(v["path"], v["keyword"]) for v in error.details["violations"]] == INVALID_VIOLATIONS
    assert all(v["message"] for v in error.details["violations"])
    assert error.details["truncated"] is False
    assert error.message.startswith(
        f"The content does not conform to the configSchema of device model {MODEL_CODE}: "
        f"{len(INVALID_VIOLATIONS)} violation(s), the first at /logLevel: "
    )


def test_at_most_fifty_violations_and_a_flag_when_there_were_more() -> None:
    schema = {"additionalProperties": {"type": "integer"}}
    result = violations(check_schema(schema), {f"k{i:02d}": "x" for i in range(60)})
    assert len(result.items) == MAX_VIOLATIONS
    assert result.truncated
    assert [v.path for v in result.items[:2]] == ["/k00", "/k01"]
    exactly = violations(check_schema(schema), {f"k{i:02d}": "x" for i in range(50)})
    assert len(exactly.items) == MAX_VIOLATIONS
    assert not exactly.truncated
    with pytest.raises(SchemaViolation, match="50 or more violation"):
        conform(check_schema(schema), "m", {f"k{i:02d}": "x" for i in range(60)})


@pytest.mark.parametrize(
    ("schema", "content", "expected"),
    [
        ({"properties": {"a/b~c": {"type": "string"}}}, {"a/b~c": 1}, [("/a~1b~0c", "type")]),
        ({"items": {"type": "integer"}}, [1, True, 2.5, 3.0], [("/1", "type"), ("/2", "type")]),
        ({"properties": {"n": {"maximum": 10}}}, {"n": 10**300}, [("/n", "maximum")]),
        ({"properties": {"n": {"minimum": 0}}}, {"n": -1e308}, [("/n", "minimum")]),
        ({"properties": {"ip": {"format": "ipv4"}}}, {"ip": "10.0.0.256"}, [("/ip", "format")]),
        ({"properties": {"e": {"format": "no-such-format"}}}, {"e": "x"}, []),
        ({"type": "object"}, [], [("", "type")]),
        ({"properties": {"u": {"uniqueItems": True}}}, {"u": [1, 1.0]}, [("/u", "uniqueItems")]),
        ({"properties": {"b": {"const": 1}}}, {"b": True}, [("/b", "const")]),
    ],
)
def test_violations_as_json_sees_them(
    schema: dict[str, Any], content: Any, expected: list[tuple[str, str]]
) -> None:
    assert found(schema, content) == expected


def test_an_empty_member_name_is_lost_from_the_path() -> None:
    # jsonschema-rs 0.60 leaves empty member names out of an error's instance path (its
    # `evaluate` output keeps them, but gives no keyword): `/` (the member "") comes out as ``.
    # Configs with an empty member name are rare; when this fails, the library keeps them:
    # expect "/" and "/a/" here, and say so in docs/API.md.
    schema = {"properties": {"": {"const": 1}, "a": {"properties": {"": {"type": "string"}}}}}
    assert found(schema, {"": 2, "a": {"": 3}}) == [("", "const"), ("/a", "type")]


def test_a_long_value_is_not_quoted_whole() -> None:
    schema = {"properties": {"s": {"type": "string", "pattern": "^x+$"}}}
    (violation,) = violations(check_schema(schema), {"s": "y" * 100_000}).items
    assert len(violation.message) == MAX_MESSAGE
    assert violation.message.endswith("…")


def schema_error(schema: dict[str, Any]) -> InvalidSchema:
    with pytest.raises(InvalidSchema) as raised:
        check_schema(schema)
    assert (raised.value.status, raised.value.code) == (422, "INVALID_SCHEMA")
    return raised.value


def where(error: InvalidSchema) -> list[tuple[str, str]]:
    assert error.details is not None
    return [(v["path"], v["keyword"]) for v in error.details["violations"]]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "intger"}, ("/type", "anyOf")),
        ({"properties": {"a": {"minimum": "x"}}}, ("/properties/a/minimum", "type")),
        ({"required": [1]}, ("/required/0", "type")),
        ({"$defs": {"a": {"maxLength": 1.5}}}, ("/$defs/a/maxLength", "type")),
        ({"multipleOf": 0}, ("/multipleOf", "exclusiveMinimum")),
        ({"pattern": "("}, ("/pattern", "format")),
        ({"patternProperties": {"[": {}}}, ("/patternProperties/[", "format")),
        ({"$ref": "#/$defs/nope"}, ("/$ref", "$ref")),
        ({"properties": {"a": {"$ref": "#nope"}}}, ("/properties/a/$ref", "$ref")),
        ({"allOf": [{}, {"$ref": "#/$defs/a~1b"}]}, ("/allOf/1/$ref", "$ref")),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, ("/$schema", "$schema")),
        ({"$schema": "https://json-schema.org/draft/2019-09/schema"}, ("/$schema", "$schema")),
        ({"$schema": 5}, ("/$schema", "$schema")),
        ({"items": {"$ref": "https://example.com/x.json"}}, ("/items/$ref", "$ref")),
        ({"$ref": "file:///etc/passwd"}, ("/$ref", "$ref")),
        ({"$ref": "urn:example:x"}, ("/$ref", "$ref")),
        ({"$id": "https://example.com/root.json", "$ref": "other.json"}, ("/$ref", "$ref")),
        ({"$dynamicRef": "https://example.com/x"}, ("/$dynamicRef", "$dynamicRef")),
    ],
)
def test_a_schema_that_is_not_valid_2020_12_says_where(
    schema: dict[str, Any], expected: tuple[str, str]
) -> None:
    error = schema_error(schema)
    assert where(error)[0] == expected
    assert "configSchema is not a valid JSON Schema (draft 2020-12)" in error.message


def test_every_mistake_of_a_schema_is_listed() -> None:
    error = schema_error({"type": "intger", "minLength": -1, "required": "a"})
    assert sorted(where(error)) == [
        ("/minLength", "minimum"),
        ("/required", "type"),
        ("/type", "anyOf"),
    ]
    many = schema_error({"properties": {f"p{i:02d}": {"type": 5} for i in range(60)}})
    assert len(where(many)) == MAX_VIOLATIONS
    assert many.details is not None
    assert many.details["truncated"] is True


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"$schema": "https://json-schema.org/draft/2020-12/schema"},
        {"$schema": "https://json-schema.org/draft/2020-12/schema#"},
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},  # a loop, never followed
        {"$id": "https://example.com/r.json", "$defs": {"a": {"$id": "a.json"}}, "$ref": "a.json"},
        {"$defs": {"a": {"$anchor": "port", "type": "integer"}}, "$ref": "#port"},
        {"$ref": "https://json-schema.org/draft/2020-12/schema"},  # the meta-schema, built in
        {"properties": {"s": {"pattern": "^(?!admin$)[a-z]+$"}}},  # ECMA-262 lookahead
    ],
)
def test_local_references_and_the_dialect_are_fine(schema: dict[str, Any]) -> None:
    assert check_schema(schema).schema is schema


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with a schema, and remembers it was asked."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = type("Handler", (Recorder,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_remote_reference_is_refused_and_never_fetched(
    schema_server: tuple[str, list[str]],
) -> None:
    url, requests = schema_server
    refused: list[dict[str, Any]] = [
        {"$ref": f"{url}/ref.json"},
        {"properties": {"a": {"$ref": f"{url}/ref.json#/$defs/x"}}},
        {"$id": f"{url}/root.json", "properties": {"a": {"$ref": "relative.json"}}},
        {"$dynamicRef": f"{url}/dynamic.json"},
        {"$schema": f"{url}/dialect.json"},
        {"$defs": {"a": {"$id": f"{url}/a.json", "$ref": "b.json"}}},
    ]
    for schema in refused:
        schema_error(schema)
    with pytest.raises(InvalidSchema):  # a model version already stored that names one
        SchemaCache().compiled("etag", refused[0])
    # An embedded resource naming an unknown dialect: whatever it means, nothing is fetched.
    check_schema({"$defs": {"a": {"$id": f"{url}/a.json", "$schema": f"{url}/meta.json"}}})
    assert requests == []
    with urllib.request.urlopen(f"{url}/ref.json") as response:  # the recorder does record
        assert response.status == 200
    assert requests == ["/ref.json"]


def test_compiled_schemas_are_kept_per_model_version() -> None:
    cache = SchemaCache()
    first = cache.compiled("v1", esp32_schema())
    assert cache.compiled("v1", {"type": "null"}) is first  # the key names the version
    second = cache.compiled("v2", {"type": "null"})
    assert second is not first
    assert len(cache) == 2
    assert not violations(second, None)


def test_the_cache_drops_the_least_recently_used_past_its_bytes() -> None:
    schema = esp32_schema()
    cache = SchemaCache(max_bytes=2 * len(str(schema)))  # about two schemas' worth
    a = cache.compiled("a", schema)
    b = cache.compiled("b", schema)
    assert cache.compiled("a", schema) is a  # now b is the least recently used
    cache.compiled("c", schema)
    assert len(cache) == 2
    assert cache.compiled("a", schema) is a
    assert cache.compiled("b", schema) is not b  # compiled again


def test_a_schema_larger_than_the_cache_is_still_kept_alone() -> None:
    cache = SchemaCache(max_bytes=10)
    first = cache.compiled("a", esp32_schema())
    assert cache.compiled("a", esp32_schema()) is first
    cache.compiled("b", esp32_schema())
    assert len(cache) == 1


def test_the_cache_serves_threads() -> None:
    cache = SchemaCache()
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.compiled("k", esp32_schema())))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len(cache) == 1
    assert all(not violations(compiled, esp32_device()) for compiled in results)


@pytest.mark.parametrize("code", ["a", "esp32_devkitc", "0", "_", "a" * 64, "m5stack_atom_2"])
def test_model_codes(code: str) -> None:
    assert model_code(code) == code


@pytest.mark.parametrize(
    "code",
    [
        "",
        "A",
        "Esp32",
        "esp32-devkitc",
        "esp32.devkitc",
        "esp32 devkitc",
        "esp32\n",
        "esp32\x00",
        "a" * 65,
        "a" * 5000,
        "é",
        "\u0661",  # an Arabic-Indic digit
        "\uff45\uff53\uff50",  # fullwidth letters
        "..",
        "a/b",
        "%2e",
    ],
)
def test_anything_else_is_not_a_model_code(code: str) -> None:
    with pytest.raises(InvalidModelCode) as raised:
        model_code(code)
    assert (raised.value.status, raised.value.code) == (400, "INVALID_OPERATION")


def test_the_model_a_document_names() -> None:
    assert model_of({}) is None
    assert model_of({"deviceModel": None}) is None
    assert model_of({"deviceModel": MODEL_CODE}) == MODEL_CODE


@pytest.mark.parametrize(
    ("value", "echoed"),
    [
        ("ESP32", "ESP32"),
        ("esp32\n", "esp32\n"),
        ("", ""),
        (5, None),
        (True, None),
        (["esp32"], None),
        ({"code": "esp32"}, None),
        ("x" * 65, None),
    ],
)
def test_a_device_model_that_is_no_code_is_unknown(value: Any, echoed: str | None) -> None:
    with pytest.raises(UnknownModel) as raised:
        model_of({"deviceModel": value})
    assert (raised.value.status, raised.value.code) == (422, "UNKNOWN_MODEL")
    assert raised.value.details == {"deviceModel": echoed}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidModelCode(), 400, "INVALID_OPERATION"),
        (ModelNotFound("esp32"), 404, "RECORD_NOT_FOUND"),
        (UnknownModel("esp32"), 422, "UNKNOWN_MODEL"),
        (ModelInUse("esp32", 3), 409, "MODEL_IN_USE"),
        (InvalidSchema([{"path": "", "keyword": "type", "message": "m"}]), 422, "INVALID_SCHEMA"),
        (
            SchemaViolation("m", [{"path": "", "keyword": "k", "message": "m"}], False),
            422,
            "SCHEMA_VIOLATION",
        ),
        (PatchConflict(0, "test", "/a", "test failed"), 409, "PATCH_CONFLICT"),
        (UnsupportedPatchType(), 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
async def test_the_new_errors_have_the_contracts_body(
    app: Quart, error: ApiError, status: int, code: str
) -> None:
    async with app.test_request_context("/api/models/esp32", headers={"X-Request-ID": "r-1"}):
        await app.preprocess_request()
        response = error_response(error)
    body = await response.get_json()
    assert set(body) == {"error", "code", "details", "correlationId", "status"}
    assert (response.status_code, body["status"], body["code"]) == (status, status, code)
    assert body["correlationId"] == "r-1"
    if status == 404:
        assert "not found" in body["error"]
    if status == 415:
        assert "application/json-patch+json" in response.headers["Accept-Patch"]
    if code == "MODEL_IN_USE":
        assert body["details"] == {"devices": 3}


@pytest.mark.parametrize(
    "body",
    [
        {"name": "ESP32"},  # a PUT that forgets the schema must not drop it
        {"configSchema": None},
        {"name": "", "configSchema": None},
        {"name": "x" * 201, "configSchema": None},
        {"name": "ESP32", "configSchema": True},
        {"name": "ESP32", "configSchema": []},
        {"name": "ESP32", "configSchema": None, "config_schema": {}},
        {"name": 5, "configSchema": None},
    ],
)
def test_a_device_model_body_is_a_name_and_a_schema_or_null(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DeviceModelSave.model_validate(body)


def test_device_model_shapes_use_the_issues_names() -> None:
    saved = DeviceModelSave.model_validate({"name": "ESP32", "configSchema": esp32_schema()})
    assert saved.config_schema == esp32_schema()
    assert DeviceModelSave.model_validate({"name": "n", "configSchema": None}).config_schema is None
    detail = DeviceModelDetail(
        code=MODEL_CODE, name="n", has_schema=True, device_count=2, config_schema={}
    )
    assert detail.model_dump(by_alias=True) == {
        "code": MODEL_CODE,
        "name": "n",
        "has_schema": True,
        "device_count": 2,
        "configSchema": {},
    }
    with pytest.raises(ValidationError):
        DeviceModelSummary(code="ESP32", name="n", has_schema=False, device_count=0)
    found = violations(check_schema(esp32_schema()), esp32_invalid_device())
    items = [DeviceModelViolation.model_validate(item) for item in found.as_json()]
    assert [(item.path, item.keyword) for item in items] == INVALID_VIOLATIONS


def test_a_json_patch_body_documents_from() -> None:
    body = JsonPatchRequest.model_validate([{"op": "move", "from": "/a", "path": "/b"}])
    (move,) = body.root
    assert isinstance(move, MoveOperation)
    assert move.from_ == "/a"
    assert move.model_dump(by_alias=True)["from"] == "/a"


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "copy", "path": "", "from": None},  # copy and move need a source
        {"op": "move", "path": "/b", "from": ""},  # the whole document into itself
        {"op": "remove", "path": ""},
        {"op": "add", "path": "/a"},  # no value (null would be one)
        {"op": "add", "path": "a", "value": 1},  # not a pointer
        {"op": "test", "path": "/~2", "value": 1},
    ],
)
def test_the_documented_json_patch_schema_refuses_what_the_service_refuses(
    operation: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError):
        JsonPatchRequest.model_validate([operation])
    with pytest.raises(ApiError) as refused:
        check_patch(JSON_PATCH, [operation])
    assert refused.value.status in (400, 422)
