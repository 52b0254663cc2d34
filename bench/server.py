"""The service as deployed (`python -m quart_iot`), and what /proc says about its process."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15


def peak_memory(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


class BenchServer:
    """`python -m quart_iot` on a loopback port serving `directory` (None: the store `env`
    names, DATABASE_URL), logging to `log`."""

    def __init__(
        self, directory: Path | None, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PORT": str(self.port)}
        self.env.pop("ESP32_CONFIGS_DIR", None)
        if directory is not None:
            self.env["ESP32_CONFIGS_DIR"] = str(directory)
        self.env.update(env or {})
        if "DATABASE_URL" in self.env:  # the PostgreSQL store instead of the directory
            self.env.pop("ESP32_CONFIGS_DIR", None)
        self.env.pop("LOG_LEVEL", None)  # the deployed default
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "BenchServer":
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "quart_iot"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        self._wait_live(30.0)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _wait_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/health/live", timeout=1):
                    return
            except (urllib.error.URLError, OSError):  # refused, or queued while workers start
                time.sleep(0.1)
        raise RuntimeError(f"the server did not start in {timeout} s; see {self.log}")

    def fetch(self, path: str) -> tuple[bytes, dict[str, str]]:
        """GET a path: its body and headers, names in lowercase (for setting up scenarios)."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=60) as response:
            return response.read(), {
                name.lower(): value for name, value in response.headers.items()
            }
