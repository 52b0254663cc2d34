"""WORKERS: a parent that owns the listening sockets and its worker processes.

The parent binds once and hands its sockets to each worker (`pass_fds`); a second server on
the same port then fails to bind, as with one process (SO_REUSEPORT, one socket per worker,
let anyone of the same user join the port and take a share of its connections). The parent
signals each worker once, waits for every one, and exits 0 after a graceful stop; a worker
that ends on its own stops the others, and the parent exits 1 once they have drained. A
worker ends with its parent: the kernel sends it SIGTERM when the parent dies, even of
SIGKILL (PR_SET_PDEATHSIG), so no worker keeps serving an orphaned port.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys
from types import FrameType

log = logging.getLogger(__name__)

# Set by the parent for its workers: "<parent pid>:<fd>[,<fd>...]", the sockets it passes.
WORKER_ENV = "QUART_IOT_WORKER"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ParentGone(Exception):
    """The parent ended before this worker could ask to end with it."""


def inherited_sockets() -> list[int] | None:
    """In a worker: the descriptors of the parent's sockets, once this process is bound to end
    with its parent; None in any other process."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    parent, _, fds = value.partition(":")
    end_with_parent(int(parent))
    return [int(fd) for fd in fds.split(",")]


def end_with_parent(parent: int) -> None:
    """SIGTERM this process when `parent` ends, however it ends (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it ended before the prctl: no signal would ever come
        raise ParentGone


class Workers:
    """The parent's worker processes: started on its sockets, signalled once, all waited for."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self._signalled: set[int] = set()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def start(self, env: dict[str, str]) -> None:
        """One more worker: this command, with the parent's sockets."""
        if self.stopping:
            return
        fds = ",".join(str(fd) for fd in self.fds)
        env = {**env, WORKER_ENV: f"{os.getpid()}:{fds}"}
        command = [sys.executable, "-m", "quart_iot"]
        self.processes.append(subprocess.Popen(command, env=env, pass_fds=self.fds))

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        log.info("stopping: %s, passed on to the workers", signal.Signals(signum).name)
        self.stopping = True
        self.stop()

    def stop(self) -> None:
        """SIGTERM every worker not signalled yet (a second signal could cut its drain short)."""
        for process in self.processes:
            if process.pid not in self._signalled and process.returncode is None:
                self._signalled.add(process.pid)
                os.kill(process.pid, signal.SIGTERM)  # a zombie not reaped yet ignores it

    def wait(self) -> int:
        """Wait for every worker: 0 after a graceful stop, 1 if any ended otherwise."""
        if self.stopping:
            self.stop()  # a signal that came while a worker was starting
        failed = False
        running = {process.pid: process for process in self.processes}
        while running:
            # Which one ended, without reaping it (Popen does, and records its status).
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            assert ended is not None  # None only with WNOHANG
            process = running.pop(ended.si_pid)
            status = process.wait()
            if status or not self.stopping:
                failed = True
                log.error("worker %d ended (status %d): stopping the others", process.pid, status)
                self.stopping = True
                self.stop()
        return 1 if failed else 0
