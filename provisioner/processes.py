"""Whether a process runs: the one question the forwarder, the lab namespace's daemons and the upgrade lock ask."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
