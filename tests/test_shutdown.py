import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.conftest import MAC, OTHER_MAC
from tests.faults import FsyncGate
from tests.harness import assert_error_body, raw_request, temp_files
from tests.server import TLS, Server


@asynccontextmanager
async def gated_server(tmp_path: Path, **env: str) -> AsyncIterator[tuple[Server, FsyncGate]]:
    configs = tmp_path / "configs"
    configs.mkdir()
    gate = FsyncGate(tmp_path / "gate")
    server = Server(configs, {**gate.env, "LOG_LEVEL": "INFO", **env})
    await asyncio.to_thread(server.start)
    try:
        yield server, gate
    finally:
        gate.release()
        await asyncio.to_thread(server.stop)
        server.log.unlink(missing_ok=True)


async def put_held_in_fsync(
    http: httpx.AsyncClient, gate: FsyncGate
) -> "asyncio.Task[httpx.Response]":
    """A PUT started and held mid-write (its temp file written, its fsync waiting)."""
    put = asyncio.create_task(http.put(f"/api/configs/{MAC}", json={"content": {"v": "new"}}))
    await asyncio.to_thread(gate.wait_held)
    return put


def sigterm(server: Server) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)


async def wait_until_stopping(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
        while (await http.get("/api/health")).status_code != 503:
            await asyncio.sleep(0.02)
        assert (await http.get("/api/health")).json()["reason"] == "shutting down"


async def exit_code(server: Server) -> int:
    assert server.process is not None
    return await asyncio.to_thread(server.process.wait, 30)


def errors_logged(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]


async def test_sigterm_finishes_the_write_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    async with gated_server(tmp_path) as (server, gate):
        async with httpx.AsyncClient(base_url=server.url, timeout=30, verify=TLS) as http:
            put = await put_held_in_fsync(http, gate)
            sigterm(server)
            await wait_until_stopping(server)
            for method in ("PUT", "DELETE"):
                late = await asyncio.to_thread(
                    raw_request,
                    server.port,
                    method,
                    f"/api/configs/{OTHER_MAC}".encode(),
                    b'{"content": {"v": "late"}}',
                )
                assert_error_body(late, 503, "SHUTTING_DOWN")
                assert late.headers["retry-after"] == "1"
            gate.release()
            answer = await put
        assert answer.status_code == 200
        assert answer.json()["content"] == {"v": "new"}
        assert await exit_code(server) == 0
        log = server.stderr()
    assert json.loads((server.directory / f"{MAC}.json").read_bytes()) == {"v": "new"}
    assert not (server.directory / f"{OTHER_MAC}.json").exists()
    assert temp_files(server.directory) == []
    assert errors_logged(log) == []


async def test_a_write_that_outlives_shutdown_timeout(tmp_path: Path) -> None:
    async with gated_server(tmp_path, SHUTDOWN_TIMEOUT="0.5") as (server, gate):
        async with httpx.AsyncClient(base_url=server.url, timeout=30, verify=TLS) as http:
            put = await put_held_in_fsync(http, gate)
            sigterm(server)
            answer = await put  # at the deadline, while the write is still held
        assert answer.status_code == 503
        assert answer.json()["code"] == "SHUTTING_DOWN"
        assert "may or may not have been applied" in answer.json()["error"]
        assert answer.headers["retry-after"] == "1"
        assert server.process is not None
        assert server.process.poll() is None  # waiting for the write, not cutting it
        assert len(temp_files(server.directory)) == 1
        gate.release()
        assert await exit_code(server) == 0
        log = server.stderr()
    assert json.loads((server.directory / f"{MAC}.json").read_bytes()) == {"v": "new"}
    assert temp_files(server.directory) == []
    assert "WARNING" in log
    assert "still running after SHUTDOWN_TIMEOUT" in log
    assert "have ended" in log
    assert errors_logged(log) == []
