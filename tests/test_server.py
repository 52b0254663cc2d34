import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import MAC
from tests.server import TLS, Server, running_server


def test_real_server_serves_the_contract(tmp_path: Path) -> None:
    with running_server(tmp_path) as server, httpx.Client(base_url=server.url, verify=TLS) as http:
        created = http.put(f"/api/configs/{MAC.upper()}", json={"content": {"deviceName": "x"}})
        assert created.status_code == 200
        assert http.get("/api/configs").json()["count"] == 1
        device = http.get(f"/api/configs/{MAC}.json")
        assert json.loads(device.content) == {"deviceName": "x"}
        assert http.get("/api/health").json()["status"] == "healthy"
        assert "iot_config_files 1" in http.get("/metrics").text
        assert http.delete(f"/api/configs/{MAC}").status_code == 204


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.start()
    results: list[int] = []

    def slow_put() -> None:
        # A large body sent slowly keeps the request in flight while SIGTERM arrives.
        def body() -> object:
            yield b'{"content": {"blob": "'
            for _ in range(10):
                time.sleep(0.1)
                yield b"x" * 1000
            yield b'"}}'

        response = httpx.put(
            f"{server.url}/api/configs/{MAC}",
            content=body(),  # type: ignore[arg-type]
            headers={"Content-Type": "application/json"},
            timeout=10,
            verify=TLS,
        )
        results.append(response.status_code)

    thread = threading.Thread(target=slow_put)
    thread.start()
    time.sleep(0.3)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=15)
    assert server.process.wait(timeout=15) == 0
    assert results == [200]
    assert json.loads((tmp_path / f"{MAC}.json").read_text())["blob"] == "x" * 10_000
    server.log.unlink()
