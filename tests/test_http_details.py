"""HTTP details (issue 17, item 20): status lines with their reason phrase, no Content-Type on a
204, a complete HTML page at /api/docs, and errors that name the part of a path that is wrong."""

import json
import socket
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

from tests.conftest import MAC, Client
from tests.harness import assert_error_body, raw_request
from tests.server import Server

VERSION = "1767225600000000000-0a1b2c3d"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("details")
    (directory / f"{MAC}.json").write_text(json.dumps({"deviceName": "x"}))
    server = Server(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


def status_line(port: int, request: bytes) -> bytes:
    return raw_bytes_head(port, request).split(b"\r\n", 1)[0]


def raw_bytes_head(port: int, request: bytes) -> bytes:
    """The head of the server's answer to `request` (bytes sent as they are)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
    return data.partition(b"\r\n\r\n")[0]


def get(target: str, headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


@pytest.mark.parametrize(
    ("request_bytes", "line"),
    [
        (get("/api/health/live"), b"HTTP/1.1 200 OK"),
        (get("/api/nothing"), b"HTTP/1.1 404 Not Found"),
        (get("/api/configs/nope"), b"HTTP/1.1 400 Bad Request"),
        (
            b"POST /api/configs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"HTTP/1.1 405 Method Not Allowed",
        ),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (
            b"PUT /api/configs/00-11-22-33-44-55 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 15\r\nExpect: 100-continue\r\n\r\n",
            b"HTTP/1.1 100 Continue",
        ),
    ],
    ids=["200", "404", "400-app", "405", "400-parser", "100"],
)
def test_status_lines_carry_the_standard_reason_phrase(
    server: Server, request_bytes: bytes, line: bytes
) -> None:
    assert status_line(server.port, request_bytes) == line


def test_a_304_has_its_reason_phrase(server: Server) -> None:
    etag = raw_request(server.port, "GET", f"/api/configs/{MAC}.json".encode()).headers["etag"]
    request = get(f"/api/configs/{MAC}.json", f"If-None-Match: {etag}\r\n")
    assert status_line(server.port, request) == b"HTTP/1.1 304 Not Modified"


def test_a_204_carries_no_content_type(server: Server) -> None:
    mac = "00-11-22-33-44-66"
    created = raw_request(server.port, "PUT", f"/api/configs/{mac}".encode(), b'{"content": {}}')
    assert created.status == 200
    head = raw_bytes_head(
        server.port, f"DELETE /api/configs/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    )
    status, *headers = head.split(b"\r\n")
    assert status == b"HTTP/1.1 204 No Content"
    names = {header.split(b":")[0].lower() for header in headers}
    assert b"content-type" not in names
    assert b"x-request-id" in names


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (f"/api/configs/{MAC}/history/..%2F..", "Invalid version"),
        (f"/api/configs/{MAC}/history/..%2F..%2Fetc%2Fpasswd", "Invalid version"),
        (f"/api/configs/{MAC}/history/{VERSION}%2F..", "has nothing but /diff and /restore"),
        (f"/api/configs/{MAC.upper()}/history/%2e%2e/diff", "Invalid version"),
        (f"/api/configs/{MAC}/extra", f"Invalid path: config {MAC} has nothing but /history"),
        (f"/api/configs/{MAC}/history/{VERSION}/undo", "has nothing but /diff and /restore"),
        ("/api/configs/aa-bb-cc%2F..%2Fdd-ee-ff/history", "Invalid MAC address"),
        ("/api/configs/..%2F..%2Fetc%2Fpasswd", "Invalid MAC address"),
    ],
)
def test_a_path_that_no_route_takes_names_the_part_that_is_wrong(
    server: Server, target: str, message: str
) -> None:
    response = raw_request(server.port, "GET", target.encode())
    body = assert_error_body(response, 400, "INVALID_OPERATION")
    assert message in body["error"], body["error"]


def test_other_unknown_paths_are_still_route_not_found(server: Server) -> None:
    assert_error_body(raw_request(server.port, "GET", b"/api/nothing/here"), 404, "ROUTE_NOT_FOUND")


class Tags(HTMLParser):
    """The start tags of a page, in order, and the attributes of each."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_the_docs_page_is_a_complete_html_document(client: Client) -> None:
    response = await client.get("/api/docs")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    page = await response.get_data(as_text=True)
    parsed = Tags()
    parsed.feed(page)
    assert parsed.doctype is not None
    assert parsed.doctype.lower() == "doctype html"
    names = [tag for tag, _ in parsed.tags]
    assert names[:3] == ["html", "head", "meta"]
    assert parsed.tags[0][1] == {"lang": "en"}
    assert parsed.tags[2][1] == {"charset": "utf-8"}
    assert {"title", "body", "script", "link"} <= set(names)
    assert page.rstrip().endswith("</html>")
    sources = {attrs.get("src") or attrs.get("href") for _, attrs in parsed.tags}
    assert {"/api/docs/assets/swagger-ui-bundle.js", "/api/docs/assets/swagger-ui.css"} <= sources
    assert '"/api/docs/openapi.json"' in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert (await client.get(f"/api/docs/assets/{asset}")).status_code == 200
