"""CPU time and resident memory of another process, read from /proc (Linux only).

CPU comes from utime+stime of /proc/<pid>/stat, summed over all of the process's threads
by the kernel, in clock ticks (usually 10 ms). Over a run of a second or more that is
precise to a few percent, which is enough for per-request and per-event figures.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime: fields 14, 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    return sum(cpu_times(pid))


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors (sockets included): the entries of /proc/<pid>/fd."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections_to(pid: int, port: int) -> int:
    """The process's TCP sockets whose remote port is `port` (from /proc/<pid>/net/tcp and
    tcp6, matched to the socket inodes among its fds): its connections to one server."""
    inodes = set()
    for line in _proc_lines(pid, "tcp") + _proc_lines(pid, "tcp6"):
        fields = line.split()
        if int(fields[2].rsplit(":", 1)[1], 16) == port:
            inodes.add(fields[9])
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            count += os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").rstrip("]") in inodes
    return count


def _proc_lines(pid: int, table: str) -> list[str]:
    path = Path(f"/proc/{pid}/net/{table}")
    return path.read_text().splitlines()[1:] if path.exists() else []


def open_files_limit(pid: int) -> int:
    """The process's soft limit on open files (the "Max open files" row of /proc/<pid>/limits)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError(f"no open-files limit for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's master -> its workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


class CpuMeter:
    """CPU seconds a process spends between `start()` and `stop()` (user + system)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.user = self.system = 0.0
        self._start = (0.0, 0.0)

    def start(self) -> CpuMeter:
        self._start = cpu_times(self.pid)
        return self

    def stop(self) -> float:
        user, system = cpu_times(self.pid)
        self.user, self.system = user - self._start[0], system - self._start[1]
        return self.seconds

    @property
    def seconds(self) -> float:
        return self.user + self.system

    @property
    def system_share(self) -> float:
        """Fraction of the CPU time spent in the kernel (syscalls, TCP) rather than in Python."""
        return self.system / self.seconds if self.seconds else 0.0


def own_cpu_seconds() -> float:
    """CPU time of this (the load client's) process."""
    times = os.times()
    return times.user + times.system
