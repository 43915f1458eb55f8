"""Serve an artifact set's files over HTTP to the lab's nodes while a playbook runs.

Pushing a binary through Ansible's SSH connection ran at about 1 MB/s into a software-emulated VM
(sshd's cipher and the remote Python both run emulated); a plain HTTP download into the same VM ran
at about 12 MB/s. So for the lab, `up` starts this server inside the lab's network namespace, on the
host's address of the management network, and each node fetches what it lacks in one call of
playbooks/library/fetch_artifacts.py, which checks every file against the manifest's sha256. The
server needs no trust and holds no secret: it serves only the files the manifest lists (binaries,
CNI plugins, image archives; never the PKI), read-only, GET and HEAD, and only from inside the set: an
entry or a symlink that leads out of it is refused when the manifest is read and again on each request.

Run as `python -m provisioner.artifacts.serve ROOT ADDRESS`: it binds a free port, prints the port on
one line, then serves until terminated. `serving()` is the context manager `up` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from provisioner.errors import ProvisionerError

START_TIMEOUT = 30.0


def _inside(root: Path, path: Path) -> Path | None:
    """The file `path` really is (symlinks followed) when that lies under the resolved `root`, else None."""
    real = path.resolve()
    return real if real.is_relative_to(root) else None


def listed_files(root: Path) -> dict[str, Path]:
    """URL path -> file, for every file the set's manifest lists inside the set (``../``, absolute paths and
    symlinks out of it are left out, and named on stderr: the server's log)."""
    base = root.resolve()
    manifest = json.loads((root / "manifest.json").read_text())
    files: dict[str, Path] = {}
    for entry in manifest.get("files", []):
        if "path" not in entry:
            continue
        if _inside(base, base / entry["path"]) is None:
            print(f"not served: {entry['path']} lies outside {base}", file=sys.stderr)
            continue
        files["/" + entry["path"]] = base / entry["path"]
    return files


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, root: Path, files: dict[str, Path], *args: object) -> None:
        self.root = root
        self.files = files
        super().__init__(*args)  # type: ignore[arg-type]

    def do_HEAD(self) -> None:  # http.server dispatches on these names
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        listed = self.files.get(self.path)
        if listed is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not in the artifact manifest")
            return
        # Checked again now: a file of the set may have become a symlink out of it since the manifest was read.
        path = _inside(self.root, listed)
        if path is None:
            self.send_error(HTTPStatus.FORBIDDEN, "leads outside the artifact set")
            return
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "not in the artifact set")
            return
        with path.open("rb") as handle:
            # What was opened is what counts: a path changed between the check and the open is refused too.
            if _inside(self.root, Path(os.readlink(f"/proc/self/fd/{handle.fileno()}"))) is None:
                self.send_error(HTTPStatus.FORBIDDEN, "leads outside the artifact set")
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
            self.end_headers()
            if body:
                shutil.copyfileobj(handle, self.wfile, 1 << 20)

    def log_message(self, format: str, *args: object) -> None:
        pass  # each fetch is visible as its Ansible task; the server stays quiet


def serve(root: Path, address: str, port: int = 0) -> ThreadingHTTPServer:
    """A bound server for the set under `root` (port 0: a free one); call serve_forever() on it."""
    return ThreadingHTTPServer((address, port), partial(_Handler, root.resolve(), listed_files(root)))


@contextmanager
def serving(root: Path, address: str, log: Path, prefix: Sequence[str] = ()) -> Iterator[str]:
    """Run the server as a child process (under `prefix`, the lab's namespace); yields its base URL.

    Its errors go to `log` (a file, not a pipe nobody reads: a full pipe would stall the server)."""
    with log.open("w") as errors:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "provisioner.artifacts.serve", str(root), address],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the port, or nothing when it could not bind
        if not line.isdigit():
            proc.wait(timeout=START_TIMEOUT)
            raise ProvisionerError(
                f"artifact server on {address}",
                f"did not start: {log.read_text().strip()[-300:] or f'exit code {proc.returncode}'}",
                "check that the lab's network namespace and its management network exist "
                "(`provisioner status`), then re-run",
            )
        yield f"http://{address}:{line}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", type=Path, help="the artifact set (holding manifest.json)")
    parser.add_argument("address", help="the address to listen on")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args(argv)
    server = serve(args.root, args.address, args.port)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
