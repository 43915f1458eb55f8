"""The admin machine's way into an isolated lab: a loopback port forwarded to the apiserver inside it.

The lab's addresses exist only inside its network namespace, so a kubectl in the user's own shell
cannot reach them. `up` keeps one socat process (Debian's socat, not a hand-written proxy) listening
on 127.0.0.1:<port> on the host; for each connection it runs `ip netns exec <namespace> socat` to the
apiserver, so nothing on the host listens beyond loopback and nothing in the lab gains a route out.
The apiserver certificate names 127.0.0.1, so TLS verifies as it does inside the lab (kind does the
same with a loopback port mapped into its node container).

The process outlives `up` (a session of its own); its pid, port and target are kept in the state
directory, so the next `up` finds and reuses it, and `destroy` stops it. After a reboot of the admin
machine it is gone, and the next `up` starts it again on the same port when that port is free.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner.errors import ProvisionerError, ToolMissing
from provisioner.state import State

LOOPBACK = "127.0.0.1"
START_SECONDS = 10  # how long a new forwarder gets to accept connections


@dataclass(frozen=True)
class Forwarder:
    pid: int
    port: int
    target: str  # host:port inside the lab
    prefix: tuple[str, ...]  # how to enter the lab (ip netns exec NAME)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"


def command(port: int, target: str, prefix: tuple[str, ...]) -> list[str]:
    """socat on the host's loopback; per connection, a socat inside the lab to the target."""
    inner = " ".join([*prefix, "socat", "STDIO", f"TCP:{target}"]).replace(":", r"\:").replace(",", r"\,")
    return [
        _socat(),
        f"TCP-LISTEN:{port},bind={LOOPBACK},reuseaddr,fork",
        f"EXEC:{inner}",
    ]


def running(state: State) -> Forwarder | None:
    """The forwarder `up` started for this cluster, if that process is still the one listening."""
    try:
        data = json.loads(state.forwarder_file.read_text())
        fwd = Forwarder(int(data["pid"]), int(data["port"]), str(data["target"]), tuple(data["prefix"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_ours(fwd):
        return None
    return fwd


def ensure(state: State, prefix: list[str], target: str) -> Forwarder:
    """A forwarder to `target` for this cluster: the running one if it still fits, else a new one."""
    current = running(state)
    fits = current is not None and current.target == target and current.prefix == tuple(prefix)
    if fits and current is not None and _accepts(current.port):
        return current
    port = _previous_port(state)  # the user's kubeconfig names it: keep it when it is free
    if current is not None:
        stop(state)
    if port is None or not _free(port):
        port = _free_port()
    log = (state.root / "forwarder.log").open("ab")
    with log:
        proc = subprocess.Popen(
            command(port, target, tuple(prefix)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives `up`, and a Ctrl-C in the user's shell does not reach it
            close_fds=True,
        )
    fwd = Forwarder(proc.pid, port, target, tuple(prefix))
    deadline = time.monotonic() + START_SECONDS
    while not _accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise ProvisionerError(
                f"forwarder {LOOPBACK}:{port} -> {target}",
                f"socat did not accept connections within {START_SECONDS} s (exit {proc.poll()})",
                f"read {state.root / 'forwarder.log'}",
            )
        time.sleep(0.1)
    state.forwarder_file.write_text(json.dumps({**asdict(fwd), "prefix": list(fwd.prefix)}) + "\n")
    return fwd


def stop(state: State) -> bool:
    """Stop this cluster's forwarder; True when one was running."""
    fwd = running(state)
    state.forwarder_file.unlink(missing_ok=True)
    if fwd is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(fwd.pid, signal.SIGTERM)  # the listener and any connection it is serving
    deadline = time.monotonic() + 5
    while _alive(fwd.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(fwd.pid, signal.SIGKILL)
    return True


# --- internals -------------------------------------------------------------------------------------


def _socat() -> str:
    path = shutil.which("socat")
    if path is None:
        raise ToolMissing(
            "socat", "the admin machine's loopback forwarder into the lab needs it", "apt-get install socat"
        )
    return path


def _is_ours(fwd: Forwarder) -> bool:
    """The pid is alive and is still our socat on our port (a pid can be reused after a reboot)."""
    try:
        argv = Path(f"/proc/{fwd.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg.startswith(f"TCP-LISTEN:{fwd.port},".encode()) for arg in argv) and _alive(fwd.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by us) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as socat binds (reuseaddr)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _previous_port(state: State) -> int | None:
    try:
        return int(json.loads(state.forwarder_file.read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
