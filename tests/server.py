"""Run the real service (`python -m quart_iot`) in its own process group, for end-to-end tests."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One `python -m quart_iot` process serving `directory` on a loopback port (or, with
    DATABASE_URL in `env`, a PostgreSQL database; `directory` is then its working directory)."""

    def __init__(
        self,
        directory: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.wrapper = list(wrapper)  # e.g. setpriv, to drop privileges (see tests/harness.py)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "ESP32_CONFIGS_DIR": str(directory),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        if "DATABASE_URL" in self.env:
            del self.env["ESP32_CONFIGS_DIR"]
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="quart_iot-server-", suffix=".log")[1])

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "quart_iot"],
                env=self.env,
                start_new_session=True,  # its own process group, so a kill takes all of it
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr()}")
            try:
                if httpx.get(f"{self.url}/api/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start in time")

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the graceful stop."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def stderr(self) -> str:
        """Everything the server logged so far (all its starts)."""
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(directory: Path, **env: str) -> Iterator[Server]:
    """A started server with extra environment variables (MQTT_URL=..., say)."""
    server = Server(directory, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)
