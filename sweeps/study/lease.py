"""Who runs a RUNNING trial, and whether that worker is still alive.

A worker stores a lease in the trial's user attrs (so it works on every Optuna storage): its host identity, pid and
process start time, and `until`, renewed while the trial runs. Another worker decides from it:

- same host (hostname, boot id and pid namespace all equal): the process is asked directly. No such process, a
  zombie, or a process with another start time (the pid was reused) means the worker died: re-queue at once.
- otherwise, or when the start time cannot be read: the lease is trusted until it expires.

psutil would give the start time too, but is not a dependency; /proc/<pid>/stat is what it reads on Linux.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

LIVE, DEAD, EXPIRED = "live", "dead", "expired"
HOST_KEYS = ("host", "boot", "pidns")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def host_identity() -> dict[str, str]:
    """Two workers with equal identities see each other's processes (same kernel boot, same pid namespace)."""
    pidns = ""
    with contextlib.suppress(OSError):
        pidns = os.readlink("/proc/self/ns/pid")
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns}


def process_start(pid: int) -> str | None:
    """A token for when process `pid` started ('' if it runs but that is unknown); None if it does not run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (macOS): existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    # field 2 (comm) may hold spaces and parentheses: fields 3.. follow the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent: dead all the same
        return None
    return fields[19]  # field 22: start time in clock ticks since boot


def new_lease(seconds: float, now: float | None = None) -> dict[str, Any]:
    pid = os.getpid()
    now = time.time() if now is None else now
    return {**host_identity(), "pid": pid, "start": process_start(pid) or "", "until": now + seconds}


def verdict(lease: dict[str, Any], now: float, me: dict[str, str] | None = None, probe=process_start) -> str:
    """LIVE (leave the trial alone), DEAD (its worker process is gone) or EXPIRED (not renewed in time)."""
    me = host_identity() if me is None else me
    if lease.get("pid") is not None and all(lease.get(k) == me[k] for k in HOST_KEYS):
        start = probe(int(lease["pid"]))
        if start is None or (start and lease.get("start") and start != lease["start"]):
            return DEAD
    until = lease.get("until")
    if not isinstance(until, int | float) or until <= now:
        return EXPIRED
    return LIVE


def describe(lease: dict[str, Any]) -> str:
    return f"pid {lease.get('pid', '?')} on {lease.get('host', '?')}"
