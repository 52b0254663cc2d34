"""Hostile requests over a raw socket: each gets its 4xx JSON error and changes nothing on disk."""

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.harness import RawResponse, assert_error_body, raw_bytes, raw_request, snapshot
from tests.server import Server

MAC = "aa-bb-cc-dd-ee-ff"
NEW_MAC = "00-11-22-33-44-55"
VALID_BODY = b'{"content": {"deviceName": "intruder"}}'


def _encoded(text: str) -> bytes:
    return quote(text, safe="-").encode()


def _mac_of_digits(zero: int) -> bytes:
    """A MAC spelt with the digits 1-6 of another script (`zero`: its digit zero)."""
    return _encoded("-".join(chr(zero + i) * 2 for i in range(1, 7)))


BAD_MACS: dict[str, bytes] = {
    "colons": b"aa:bb:cc:dd:ee:ff",
    "dots": b"aa.bb.cc.dd.ee.ff",
    "no separator": b"aabbccddeeff",
    "five pairs": b"aa-bb-cc-dd-ee",
    "seven pairs": b"aa-bb-cc-dd-ee-ff-00",
    "one digit short": b"aa-bb-cc-dd-ee-f",
    "non-hex": b"gg-hh-ii-jj-kk-ll",
    "trailing newline": b"aa-bb-cc-dd-ee-ff%0A",
    "trailing tab": b"aa-bb-cc-dd-ee-ff%09",
    "trailing space": b"aa-bb-cc-dd-ee-ff%20",
    "leading space": b"%20aa-bb-cc-dd-ee-ff",
    "NUL": b"aa-bb-cc-dd-ee-ff%00",
    "NUL inside": b"aa-bb-cc%00dd-ee-ff",
    "encoded slash": b"aa-bb-cc%2Fdd-ee-ff",
    "encoded dot-dot": b"%2e%2e",
    "plain dot-dot": b"..",
    "encoded traversal": b"%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "mixed traversal": b"..%2F..%2Fetc%2Fpasswd",
    "double-encoded dot-dot": b"%252e%252e%252fetc%252fpasswd",
    "double-encoded newline": b"aa-bb-cc-dd-ee-ff%250A",
    "backslashes": b"..\\..\\etc\\passwd",
    "encoded backslash": b"aa-bb-cc-dd-ee-ff%5C",
    "absolute path": b"/etc/passwd",
    "encoded absolute path": b"%2Fetc%2Fpasswd",
    "full-width digits": _mac_of_digits(0xFF10),
    "arabic-indic digits": _mac_of_digits(0x0660),
    "devanagari digit": _encoded("aa-bb-cc-dd-ee-\u0967\u0967"),
    "full-width letters": _encoded("\uff41\uff41-bb-cc-dd-ee-ff"),
    "latin-1 byte": b"%ff",
    "latin-1 byte in MAC": b"aa-bb-cc-dd-ee-%ff",
    "10 000 characters": b"a" * 10_000,
    "temp file name": b".aa-bb-cc-dd-ee-ff.json.host-1-0badc0de.tmp",
    "lock file name": b".quart_iot.lock",
    "empty": b"",
}

BODIES: dict[str, bytes] = {
    "not JSON": b"hello",
    "truncated": b'{"content": {"deviceName": "x"',
    "trailing garbage": b'{"content": {}} garbage',
    "two documents": b'{"content": {}}{"content": {}}',
    "byte order mark": b'\xef\xbb\xbf{"content": {}}',
    "array": b'[{"content": {}}]',
    "string": b'"content"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "content array": b'{"content": []}',
    "content string": b'{"content": "x"}',
    "content null": b'{"content": null}',
    "content number": b'{"content": 1}',
    "content missing": b'{"allow_overwrite": true}',
    "empty object": b"{}",
    "empty body": b"",
    "whitespace body": b"   \r\n",
    "misspelt allowOverwrite": b'{"content": {}, "allowOverwrite": false}',
    "unknown field": b'{"content": {}, "extra": 1}',
    "allow_overwrite string": b'{"content": {}, "allow_overwrite": "false"}',
    "allow_overwrite zero": b'{"content": {}, "allow_overwrite": 0}',
    "allow_overwrite one": b'{"content": {}, "allow_overwrite": 1}',
    "allow_overwrite null": b'{"content": {}, "allow_overwrite": null}',
    "invalid UTF-8": b'{"content": {"deviceName": "\xff\xfe"}}',
    "overlong UTF-8": b'{"content": {"deviceName": "\xc0\xaf"}}',
    "UTF-16": '{"content": {}}'.encode("utf-16"),
    "lone surrogate": b'{"content": {"deviceName": "\\ud800"}}',
    "lone surrogate key": b'{"content": {"\\udfff": 1}}',
    "NaN": b'{"content": {"a": NaN}}',
    "Infinity": b'{"content": {"a": Infinity}}',
    "-Infinity": b'{"content": {"a": -Infinity}}',
    "1e400": b'{"content": {"a": 1e400}}',
    "-1e400": b'{"content": {"a": -1e400}}',
    "integer beyond a double": b'{"content": {"a": 1' + b"0" * 400 + b"}}",
    "integer of 5000 digits": b'{"content": {"a": 1' + b"0" * 5000 + b"}}",
    "arrays 10 000 deep": b'{"content": {"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
    "objects 10 000 deep": b'{"content": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_001,
    "65 levels deep": b'{"content": {"a": ' + b"[" * 63 + b"]" * 63 + b"}}",
}

CONTENT_TYPES = {
    "text/plain": "text/plain",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=x",
    "xml": "application/xml",
    "missing": None,
}

WRONG_METHODS = [
    ("POST", "/api/configs"),
    ("PUT", "/api/configs"),
    ("DELETE", "/api/configs"),
    ("POST", f"/api/configs/{MAC}"),
    ("PATCH", "/api/configs"),
    ("PATCH", f"/api/configs/{MAC}.json"),
    ("PATCH", "/api/models"),
    ("POST", "/api/models/esp32"),
    ("PUT", f"/api/configs/{MAC}.json"),
    ("DELETE", f"/api/configs/{MAC}.json"),
    ("POST", f"/api/configs/{MAC}.json"),
    ("POST", "/api/health"),
    ("DELETE", "/metrics"),
    ("TRACE", "/api/configs"),
    ("BREW", f"/api/configs/{MAC}"),
]

UNKNOWN_ROUTES: list[tuple[str, bytes]] = [
    ("GET", b"/"),
    ("GET", b"/api"),
    ("GET", b"/api/config"),
    ("PUT", b"/api/config/" + MAC.encode()),
    ("GET", b"/etc/passwd"),
    ("GET", b"//etc/passwd"),
    ("GET", b"/api/../etc/passwd"),
    ("GET", b"/api/docs/assets/../../../etc/passwd"),
    ("GET", b"/api/docs/assets/%2e%2e%2f%2e%2e%2fapp.py"),
    ("GET", b"/api/health/extra"),
    ("DELETE", b"/metrics/extra"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    parent = tmp_path_factory.mktemp("hostile")
    directory = parent / "configs"
    directory.mkdir()
    (directory / f"{MAC}.json").write_text(json.dumps({"deviceName": "original"}))
    server = Server(directory)
    server.start()
    try:
        yield server, parent
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


def _unchanged_after(
    served: tuple[Server, Path], method: str, target: bytes, body: bytes, ctype: str | None
) -> RawResponse:
    """Send one request; the parent directory (configs and all around it) must not change."""
    server, parent = served
    before = snapshot(parent)
    response = raw_request(server.port, method, target, body, ctype)
    assert snapshot(parent) == before
    assert str(parent).encode() not in response.body
    assert b"Traceback" not in response.body
    return response


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("mac", BAD_MACS.values(), ids=BAD_MACS.keys())
def test_bad_mac_is_invalid_operation(served: tuple[Server, Path], method: str, mac: bytes) -> None:
    body = VALID_BODY if method == "PUT" else b""
    response = _unchanged_after(served, method, b"/api/configs/" + mac, body, "application/json")
    assert_error_body(response, 400, "INVALID_OPERATION")


@pytest.mark.parametrize("mac", BAD_MACS.values(), ids=BAD_MACS.keys())
def test_bad_mac_on_the_device_endpoint_is_invalid_operation(
    served: tuple[Server, Path], mac: bytes
) -> None:
    response = _unchanged_after(served, "GET", b"/api/configs/" + mac + b".json", b"", None)
    assert_error_body(response, 400, "INVALID_OPERATION")


@pytest.mark.parametrize("target", [MAC, NEW_MAC])
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_bad_body_is_validation_failed(
    served: tuple[Server, Path], body: bytes, target: str
) -> None:
    path = f"/api/configs/{target}".encode()
    response = _unchanged_after(served, "PUT", path, body, "application/json")
    error = assert_error_body(response, 400, "VALIDATION_FAILED")
    if error["details"] is not None:
        assert all(set(item) == {"loc", "msg", "type"} for item in error["details"]["errors"])


def test_20_mb_body_is_payload_too_large(served: tuple[Server, Path]) -> None:
    body = b'{"content": {"a": "' + b"x" * 20_000_000 + b'"}}'
    path = f"/api/configs/{MAC}".encode()
    response = _unchanged_after(served, "PUT", path, body, "application/json")
    assert_error_body(response, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("ctype", CONTENT_TYPES.values(), ids=CONTENT_TYPES.keys())
def test_body_that_is_not_json_typed_is_unsupported_media_type(
    served: tuple[Server, Path], ctype: str | None
) -> None:
    path = f"/api/configs/{MAC}".encode()
    response = _unchanged_after(served, "PUT", path, VALID_BODY, ctype)
    assert_error_body(response, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_wrong_method_is_method_not_allowed(
    served: tuple[Server, Path], method: str, path: str
) -> None:
    response = _unchanged_after(served, method, path.encode(), VALID_BODY, "application/json")
    assert_error_body(response, 405, "METHOD_NOT_ALLOWED")
    assert method not in response.headers["allow"].split(", ")
    assert "GET" in response.headers["allow"].split(", ")


@pytest.mark.parametrize(("method", "path"), UNKNOWN_ROUTES)
def test_unknown_route_is_route_not_found(
    served: tuple[Server, Path], method: str, path: bytes
) -> None:
    response = _unchanged_after(served, method, path, VALID_BODY, "application/json")
    assert_error_body(response, 404, "ROUTE_NOT_FOUND")


def test_path_under_a_config_is_a_bad_identifier(served: tuple[Server, Path]) -> None:
    path = f"/api/configs/{MAC}/extra".encode()
    response = _unchanged_after(served, "GET", path, b"", None)
    assert_error_body(response, 400, "INVALID_OPERATION")


def test_raw_non_ascii_path_is_refused_by_the_http_parser(served: tuple[Server, Path]) -> None:
    # Not HTTP/1.1 at all (a request target is ASCII): refused before the app runs, in the
    # contract's body all the same, and nothing touched.
    path = "/api/configs/\uff11\uff11-bb-cc-dd-ee-ff".encode()
    response = _unchanged_after(served, "GET", path, b"", None)
    assert_error_body(response, 400, "MALFORMED_REQUEST")


NOT_HTTP = {
    "nul in a header": (b"X-Note: a\x00b\r\n", 400, "MALFORMED_REQUEST"),
    "header without a colon": (b"X-Note\r\n", 400, "MALFORMED_REQUEST"),
    "space before the colon": (b"X-Note : a\r\n", 400, "MALFORMED_REQUEST"),
    "content-length not a number": (b"Content-Length: 1e3\r\n", 400, "MALFORMED_REQUEST"),
    "header block over the limit": (
        b"X-Big: " + b"a" * 100_000 + b"\r\n",
        431,
        "HEADERS_TOO_LARGE",
    ),
    "unknown transfer coding": (b"Transfer-Encoding: gzip\r\n", 501, "NOT_IMPLEMENTED"),
}


@pytest.mark.parametrize(("header", "status", "code"), NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_a_request_that_is_not_http_gets_the_contracts_body(
    served: tuple[Server, Path], header: bytes, status: int, code: str
) -> None:
    server, parent = served
    before = snapshot(parent)
    head = f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    response = raw_bytes(server.port, head + header + b"\r\n" + VALID_BODY)
    assert_error_body(response, status, code)
    assert response.headers["connection"] == "close"
    assert snapshot(parent) == before


def test_original_document_survived_every_attack(served: tuple[Server, Path]) -> None:
    server, _ = served
    response = raw_request(server.port, "GET", f"/api/configs/{MAC}".encode())
    assert response.status == 200
    assert response.json()["content"] == {"deviceName": "original"}


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_http2_prior_knowledge_is_answered_in_http1_and_closed(
    served: tuple[Server, Path],
) -> None:
    # HTTP/2 would let a client hold a stream for ever by never opening its flow-control
    # window (no TCP data left unsent for SEND_TIMEOUT to see): the server speaks HTTP/1.1
    # only. The preface parses as an HTTP/1.1 request and is refused as such; the frames
    # after it are not HTTP/1.1, and the connection closes.
    server, parent = served
    before = snapshot(parent)
    response = raw_bytes(server.port, H2_PREFACE + H2_SETTINGS_FRAME)
    assert response.status in (400, 404)
    assert response.headers["content-type"] == "application/json"
    assert response.body.startswith(b'{"error":')
    assert snapshot(parent) == before


def test_an_h2c_upgrade_is_ignored(served: tuple[Server, Path]) -> None:
    server, _ = served
    request = (
        b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    response = raw_bytes(server.port, request)
    assert response.status == 200  # not 101 Switching Protocols
    assert response.json() == {"status": "alive"}
