"""Item 10: browsers follow the event stream with access control on, through single-use stream
tickets (quart_iot/oidc/tickets.py), against the real OpenID Provider and in Chromium."""

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from quart_iot.app import create_app
from quart_iot.oidc import AccessControl, Identity, current_identity, token_expiry
from quart_iot.oidc.errors import InvalidToken
from quart_iot.oidc.tickets import TICKET_SECONDS, StreamTickets
from quart_iot.settings import Settings
from tests.conftest import MAC, write_config
from tests.oidc_provider import AUDIENCE, Provider, running_provider
from tests.server import TLS, Server, running_server

API_MD = Path(__file__).parent.parent / "docs" / "API.md"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TICKETS = "/api/configs/events/tickets"
EVENTS = "/api/configs/events"


class Page:
    """The browser app's origin: serves one page, and takes the report the page posts."""

    def __init__(self) -> None:
        self.html = b""
        self.report: dict[str, Any] | None = None
        self.reported = threading.Event()
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page.html)))
                self.end_headers()
                self.wfile.write(page.html)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                page.report = json.loads(body)
                page.reported.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    page = Page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="module")
def server(
    provider: Provider, page: Page, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("configs")
    write_config(directory, MAC, {"deviceName": "a"})
    env = {
        "OIDC_ISSUER": provider.issuer,
        "OIDC_AUDIENCE": AUDIENCE,
        "CORS_ORIGINS": json.dumps([page.origin]),
        "LOG_LEVEL": "INFO",
    }
    with running_server(directory, **env) as server:
        yield server


@pytest.fixture(scope="module")
def tokens(provider: Provider) -> dict[str, str]:
    return {client: provider.token(client) for client in ("reader", "writer", "norole", "device-a")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ticket_for(server: Server, token: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
        response = await http.post(TICKETS, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert 0 < response.json()["expires_in"] <= TICKET_SECONDS
    ticket: str = response.json()["ticket"]
    return ticket


async def open_stream(server: Server, ticket: str, **headers: str) -> httpx.Response | str:
    """The stream's first line when it opens, else the refusal."""
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http,
        http.stream("GET", EVENTS, params={"ticket": ticket}, headers=headers) as stream,
    ):
        if stream.status_code != 200:
            await stream.aread()
            return stream
        return await anext(stream.aiter_lines())


async def test_a_ticket_opens_the_event_stream_once(server: Server, tokens: dict[str, str]) -> None:
    ticket = await ticket_for(server, tokens["reader"])
    assert await open_stream(server, ticket) == ": connected"
    again = await open_stream(server, ticket)
    assert isinstance(again, httpx.Response)
    assert again.status_code == 401
    assert again.json()["error"] == "The stream ticket was used already"
    assert 'error="invalid_token"' in again.headers["WWW-Authenticate"]
    assert tokens["reader"] not in ticket  # the token itself never goes into the URL


async def test_a_ticket_needs_a_token_that_may_read_the_events(
    server: Server, tokens: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
        assert (await http.post(TICKETS)).status_code == 401
        for client in ("norole", "device-a"):
            refused = await http.post(TICKETS, headers=bearer(tokens[client]))
            assert refused.status_code == 403
            assert refused.json()["code"] == "FORBIDDEN"
        # A writer may read the events too.
        assert (await http.post(TICKETS, headers=bearer(tokens["writer"]))).status_code == 200


@pytest.mark.parametrize(
    "path", ["/api/configs", f"/api/configs/{MAC}", f"/api/configs/{MAC}.json", TICKETS]
)
async def test_a_ticket_is_accepted_by_the_event_stream_only(
    server: Server, tokens: dict[str, str], path: str
) -> None:
    ticket = await ticket_for(server, tokens["writer"])
    async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
        method = "POST" if path == TICKETS else "GET"
        response = await http.request(method, path, params={"ticket": ticket})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="quart_iot"'  # no token sent
    assert await open_stream(server, ticket) == ": connected"  # it was not used up


async def test_a_ticket_beside_a_bearer_token_is_400_invalid_request(
    server: Server, tokens: dict[str, str]
) -> None:
    ticket = await ticket_for(server, tokens["reader"])
    refused = await open_stream(server, ticket, Authorization=f"Bearer {tokens['reader']}")
    assert isinstance(refused, httpx.Response)
    assert refused.status_code == 400
    assert refused.json()["code"] == "INVALID_REQUEST"
    assert 'error="invalid_request"' in refused.headers["WWW-Authenticate"]


async def test_a_forged_or_expired_ticket_is_401(
    server: Server, provider: Provider, tokens: dict[str, str]
) -> None:
    ticket = await ticket_for(server, tokens["reader"])
    payload, _, signature = ticket.partition(".")
    for forged in (f"{payload}.{signature[:-2]}AA", f"{payload[:-2]}AA.{signature}", "x", ""):
        refused = await open_stream(server, forged)
        assert isinstance(refused, httpx.Response)
        assert (refused.status_code, refused.json()["error"]) == (
            401,
            "The stream ticket is not valid",
        )
    # A token within its leeway past `exp`: its ticket ends with it, that is, at once.
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": AUDIENCE, "sub": "late", "iat": now - 600,
              "exp": now - 5, "realm_access": {"roles": ["iot-config-reader"]}}  # fmt: skip
    token = provider.keys[0].sign(claims)  # the provider's own key
    expired = await open_stream(server, await ticket_for_expired(server, token))
    assert isinstance(expired, httpx.Response)
    assert expired.json()["error"] == "The stream ticket has expired"


async def ticket_for_expired(server: Server, token: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
        response = await http.post(TICKETS, headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["expires_in"] == 0
    ticket: str = response.json()["ticket"]
    return ticket


def test_a_ticket_works_on_every_process_with_the_same_secret_key() -> None:
    """Signed, not stored: a worker or replica with the same SECRET_KEY accepts it. Single
    use is per process: another process accepts it once more (the documented limit)."""
    identity = Identity("sub:alice", "reader", time.time() + 300)
    issuer, other, stranger = (StreamTickets(s) for s in ("secret", "secret", "another"))
    ticket = issuer.issue(identity).ticket
    assert other.redeem(ticket) == identity
    with pytest.raises(InvalidToken, match="used already"):
        other.redeem(ticket)
    assert issuer.redeem(ticket) == identity  # another process: once more, no more
    with pytest.raises(InvalidToken, match="not valid"):
        stranger.redeem(issuer.issue(identity).ticket)


def test_redeemed_tickets_are_remembered_until_they_expire_only() -> None:
    tickets = StreamTickets("secret", seconds=0.5)
    identity = Identity("sub:alice", "reader", time.time() + 300)
    for _ in range(1000):
        tickets.redeem(tickets.issue(identity).ticket)
    time.sleep(0.6)  # every ticket redeemed so far has expired
    fresh = [tickets.issue(identity).ticket for _ in range(30)]
    for ticket in fresh:  # the 1025th is the first sweep: it forgets the expired ones
        tickets.redeem(ticket)
    assert len(tickets._used) == 30
    with pytest.raises(InvalidToken, match="used already"):
        tickets.redeem(fresh[0])


async def test_a_ticket_s_stream_knows_the_token_s_subject_and_expiry(
    configs_dir: Path, provider: Provider, tokens: dict[str, str]
) -> None:
    """The stream a ticket opens ends when the token would have (the accessor waiting uses)."""
    settings = Settings(
        esp32_configs_dir=configs_dir,
        oidc_issuer=provider.issuer,
        oidc_audience=AUDIENCE,
        _env_file=None,
    )
    app = create_app(settings)
    async with app.test_app():
        response = await app.test_client().post(TICKETS, headers=bearer(tokens["reader"]))
        ticket = (await response.get_json())["ticket"]
        async with app.test_request_context(EVENTS, query_string={"ticket": ticket}):
            await app.preprocess_request()
            identity, expiry = current_identity(), token_expiry()
    exp = jwt.decode(tokens["reader"], options={"verify_signature": False})["exp"]
    assert identity == Identity("sub:reader", "reader", exp)
    assert expiry == exp
    assert AccessControl.of(app).tickets is not None


def test_workers_share_the_secret_key_so_any_worker_accepts_a_ticket(
    provider: Provider, tokens: dict[str, str], tmp_path: Path
) -> None:
    env = {"OIDC_ISSUER": provider.issuer, "OIDC_AUDIENCE": AUDIENCE, "WORKERS": "2"}

    async def follow(server: Server) -> None:
        for _ in range(8):  # each on a new connection, which the kernel gives either worker
            ticket = await ticket_for(server, tokens["reader"])
            assert await open_stream(server, ticket) == ": connected"

    with running_server(tmp_path, **env) as server:
        asyncio.run(follow(server))  # with a key per worker, about half would be refused


def documented_example() -> str:
    """The browser example of docs/API.md (the `followChanges` block)."""
    blocks = re.findall(r"```js\n(.*?)```", API_MD.read_text(), re.DOTALL)
    [example] = [block for block in blocks if "function followChanges" in block]
    return str(example)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>follow</title></head><body><script>
%(example)s
const api = %(api)s, reader = %(reader)s;
const report = (result) => fetch("/report", { method: "POST", body: JSON.stringify(result) });
// Without a ticket, EventSource cannot authenticate: refused (401), closed for good.
const bare = new EventSource(`${api}/api/configs/events`);
bare.onerror = () => {
  const refused = bare.readyState === EventSource.CLOSED;
  bare.close();
  const stop = followChanges(api, async () => reader, (kind, data) => {
    if (kind !== "saved") return;
    stop();
    report({ refusedWithoutTicket: refused, saved: data.mac_address });
  });
};
</script></body></html>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
async def test_a_browser_follows_the_stream_with_the_documented_example(
    server: Server, page: Page, tokens: dict[str, str], tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    page.html = (
        PAGE
        % {
            "example": documented_example(),
            "api": json.dumps(server.url),
            "reader": json.dumps(tokens["reader"]),
        }
    ).encode()
    browser = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        page.origin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_a_stream(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
            put = await http.put(
                f"/api/configs/{MAC}",
                json={"content": {"deviceName": "from the test"}},
                headers=bearer(tokens["writer"]),
            )
        assert put.status_code == 200
        assert await asyncio.to_thread(page.reported.wait, 60), "no report from the page"
    finally:
        browser.kill()
        await browser.wait()
    assert page.report == {"refusedWithoutTicket": True, "saved": MAC}


async def wait_for_a_stream(server: Server) -> None:
    """Until the page's event stream is open on the server (its gauge says 1)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
        for _ in range(600):
            text = (await http.get("/metrics")).text
            if 'iot_waiting_requests{kind="events"} 1' in text:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the browser never opened the event stream")


async def test_a_stream_ends_when_its_token_expires(server: Server, provider: Provider) -> None:
    token = provider.token("short-lived")  # expires 6 s after it is issued
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30, verify=TLS) as http,
        http.stream("GET", EVENTS, headers=bearer(token)) as stream,
    ):
        assert stream.status_code == 200
        received = [line async for line in stream.aiter_lines()]  # ends: the server closed it
    assert received[0] == ": connected"
    assert any(line.startswith("id: ") for line in received)  # where the client resumes
    assert time.time() >= expires_at - 1  # it ended at the token's expiry, not before
