"""Run the real service (`python -m quart_iot`) in its own process group, for end-to-end tests."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

ESTABLISHED, LISTEN = "01", "0A"  # states in /proc/net/tcp

# The TLS context of every HTTP client the tests make (`verify=TLS`). Without it, httpx builds
# one for each client and each `httpx.get`, reading the CA bundle (about 40 ms of CPU) every
# time: about 1,500 times a run, nearly all for plain-HTTP loopback servers.
TLS = httpx.create_ssl_context()


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
        traced: bool = True,
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
        if not traced:  # no coverage: a server the test will SIGKILL would save none of it
            for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"):
                self.env.pop(name, None)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="quart_iot-server-", suffix=".log")[1])

    def start(self, timeout: float = 60.0) -> None:
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
                live = httpx.get(f"{self.url}/api/health/live", timeout=1, verify=TLS)
                if live.status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.kill()  # not left running behind the failed test
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
        with contextlib.suppress(ProcessLookupError):  # whatever outlived it (none should)
            os.killpg(self.process.pid, signal.SIGKILL)
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


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except FileNotFoundError:
        return []


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(match.group(1))
    return inodes


def tcp_sockets(state: str, port: int, remote_port: int | None = None) -> set[str]:
    """Inodes of the TCP sockets in `state` on local `port` (and `remote_port`, if given)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if fields[3] == state and local == port and remote_port in (None, remote):
                inodes.add(fields[9])
    return inodes


def send_queue(port: int, remote_port: int) -> int:
    """Bytes the kernel holds, sent but not yet acknowledged (or not sent for want of window),
    on the server's end (local `port`) of the connection from `remote_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if (local, remote) == (port, remote_port):
                return int(fields[4].split(":")[0], 16)
    return 0


def open_file_limits(pid: int) -> tuple[str, str]:
    """The soft and hard limits of open files of process `pid`."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError(f"no open-file limit for {pid}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds (AssertionError naming `what` after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
