"""Writing the files that hold keys (the PKI, the Secret encryption config) on the admin machine."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file created with the final mode, so a key is never world-readable and a
    reader (or an interrupted run) sees the old content or the new, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)
