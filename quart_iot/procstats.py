"""The conventional `process_*` figures of this process, read from /proc/self (Linux)."""

import os
import resource
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = resource.getpagesize()


@dataclass(frozen=True, slots=True)
class ProcessStats:
    resident_memory_bytes: int
    virtual_memory_bytes: int
    cpu_seconds: float
    start_time_seconds: float  # since the Unix epoch
    open_fds: int
    max_fds: int


def read_process_stats() -> ProcessStats | None:
    """This process's figures now; None where /proc is not there (not Linux)."""
    try:
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = (PROC / "self" / "stat").read_text().rsplit(")", 1)[1].split()
        open_fds = len(os.listdir(PROC / "self" / "fd"))
        boot = _boot_time()
    except OSError:
        return None
    return ProcessStats(
        resident_memory_bytes=int(fields[21]) * _PAGE,  # rss, field 24 of proc(5)
        virtual_memory_bytes=int(fields[20]),  # vsize, field 23
        cpu_seconds=(int(fields[11]) + int(fields[12])) / _TICKS,  # utime + stime
        start_time_seconds=boot + int(fields[19]) / _TICKS,  # starttime, ticks after boot
        open_fds=open_fds - 1,  # less the descriptor listdir itself held open
        max_fds=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    )


def _boot_time() -> float:
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")
