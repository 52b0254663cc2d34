"""Faults injected into a real server process (tests/server.py), through a `sitecustomize`.

The server runs unchanged: Python imports `sitecustomize` at start-up from PYTHONPATH, and
ours patches `os.fsync` only when an environment variable asks for it. Pass the `env` of a
fault to `Server(directory, env)` (or merge several faults' envs).

- `slow_fsync_env(seconds)`: every fsync sleeps that long first.
- `FsyncGate(tmp_path)`: every fsync waits until the test calls `release()`; `wait_held()`
  returns once a server thread is held in one (a write is mid-way, its temp file written).
  `FsyncGate(tmp_path, armed=False)` lets every fsync through until the test calls `arm()`.
"""

import os
import tempfile
import time
from pathlib import Path

_HOOK = """
import os
import time

_delay = float(os.environ.get("QUART_IOT_FAULT_FSYNC_DELAY") or 0)
_gate = os.environ.get("QUART_IOT_FAULT_FSYNC_GATE")
if _delay or _gate:
    _fsync = os.fsync

    def fsync(fd):
        if _gate and not os.path.exists(os.path.join(_gate, "disarmed")):
            open(os.path.join(_gate, "held"), "a").close()
            while not os.path.exists(os.path.join(_gate, "released")):
                time.sleep(0.01)
        time.sleep(_delay)
        return _fsync(fd)

    os.fsync = fsync
"""


def _hook_dir() -> Path:
    directory = Path(tempfile.gettempdir(), f"quart_iot-faults-{os.getpid()}")
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(_HOOK, encoding="utf-8")
    return directory


def _with_hook(variables: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(_hook_dir()), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, **variables}


def slow_fsync_env(seconds: float) -> dict[str, str]:
    """Server environment in which every os.fsync first sleeps `seconds`."""
    return _with_hook({"QUART_IOT_FAULT_FSYNC_DELAY": str(seconds)})


class FsyncGate:
    """Holds every os.fsync of a server process until the test releases it."""

    def __init__(self, directory: Path, armed: bool = True) -> None:
        self.directory = directory  # a scratch directory of the test, not the configs one
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env = _with_hook({"QUART_IOT_FAULT_FSYNC_GATE": str(directory)})
        if not armed:
            (self.directory / "disarmed").touch()

    def arm(self) -> None:
        """From now on, hold every fsync (until `release()`)."""
        (self.directory / "disarmed").unlink(missing_ok=True)

    def wait_held(self, timeout: float = 20.0) -> None:
        """Block until a server thread waits in fsync (run it with asyncio.to_thread)."""
        deadline = time.monotonic() + timeout
        while not (self.directory / "held").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("no fsync was held")
            time.sleep(0.01)

    def release(self) -> None:
        """Let every fsync, held or to come, through."""
        (self.directory / "released").touch()
