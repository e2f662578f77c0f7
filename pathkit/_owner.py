"""Who owns a temporary or lock file: host, pid and the process's start time.

On a shared file system (the normal case for a cohort's ``out_dir`` with Dask workers on several nodes) a
pid means nothing on another host, and on one host a pid is reused after its process died. A file is only
ever judged stale when it was written on this host by a process that is gone (or whose pid now belongs to a
process that started later); another host's file is never touched.
"""
from __future__ import annotations

import os
import re
import socket

_TAG = re.compile(r"^pk-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-(?P<start>\d+)$")


def host() -> str:
    """This host's name, reduced to the characters a file name tag may hold."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-") or "host"


def process_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (Linux ``/proc``), 0 where unknown, None when no such
    process exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # the name (field 2) may hold spaces and parentheses: split after its last ')'
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0
    return 0


def tag() -> str:
    """``pk-<host>-<pid>-<start>`` of this process (the owner written into temporary file names)."""
    pid = os.getpid()
    return f"pk-{host()}-{pid}-{process_start(pid) or 0}"


def parse_tag(text: str) -> dict | None:
    m = _TAG.match(text)
    if not m:
        return None
    return {"host": m["host"], "pid": int(m["pid"]), "start": int(m["start"])}


def is_dead(owner: dict) -> bool:
    """True only when the owner ran on this host and its process is gone (its pid unused, or reused by a
    process that started at another time). Another host's owner is never dead from here."""
    if owner.get("host") != host():
        return False
    pid = int(owner.get("pid", -1))
    now = process_start(pid)
    if now is None:
        return True
    start = int(owner.get("start") or 0)
    return bool(start and now and now != start)
