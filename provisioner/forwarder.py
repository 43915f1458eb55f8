"""The admin machine's way to the apiservers: one haproxy on the host's loopback in front of every master.

The lab's addresses exist only inside its network namespace, so a kubectl in the user's own shell cannot
reach them; and with several masters, no single one of them may be the admin machine's way in. `up` keeps
one haproxy (Debian's) listening on 127.0.0.1:<port> on the host. Its servers are every master's
apiserver, reached from inside the lab's namespace (haproxy's `namespace` server option), health-checked,
and left out while they are down, so the admin machine's kubeconfig survives the loss of any one master.
Nothing on the host listens beyond loopback and nothing in the lab gains a route out. TLS passes through
untouched (the apiserver certificate names 127.0.0.1), as kind maps a loopback port into its node.

Its configuration is the workers' own balancer's (the apiserver_lb role's template and defaults),
rendered here with the namespace added, so both balance and fail over alike: a master whose apiserver is not
ready (its /readyz, asked with the balancers' health-check certificate from the cluster PKI) gets no
connections. New health-check credentials (`certs renew`) restart it.

The process outlives `up` (a session of its own); its pid, port and targets are kept in the state
directory, so the next `up` finds and reuses it, and `destroy` stops it. After a reboot of the admin
machine it is gone, and the next `up` starts it again on the same port when that port is free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from provisioner.errors import ProvisionerError, ToolMissing
from provisioner.paths import ROLES, role_defaults
from provisioner.processes import alive
from provisioner.state import State

LOOPBACK = "127.0.0.1"
START_SECONDS = 10  # how long a new forwarder gets to accept connections
ROLE = "apiserver_lb"  # the workers' balancer: its template, its defaults
ROLE_DIR = ROLES / ROLE


@dataclass(frozen=True)
class Forwarder:
    pid: int
    port: int
    targets: tuple[str, ...]  # host:port of every apiserver, as addressed inside the lab
    namespace: str | None  # the lab's network namespace; None when the hosts are reachable directly
    credentials: str  # sha256 of the health checks' certificate, key and CA it started with

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"


def config(port: int, targets: Sequence[str], namespace: str | None) -> str:
    """The haproxy configuration: the apiserver_lb role's template, bound to the host's loopback."""
    defaults = _role_defaults()
    names = [f"apiserver-{i + 1}" for i in range(len(targets))]
    hosts, ports = zip(*(t.rsplit(":", 1) for t in targets), strict=True)
    if len(set(ports)) != 1:
        raise ValueError(f"the apiservers listen on one port, not {sorted(set(ports))}")
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string((ROLE_DIR / "templates" / "apiserver-lb.cfg.j2").read_text())
    return template.render(
        {
            **defaults,
            "ansible_managed": "Written by provisioner (forwarder.py) on the admin machine; do not edit.",
            "apiserver_lb_port": port,
            "apiserver_lb_backends": names,
            "apiserver_lb_backend_port": ports[0],
            "apiserver_lb_namespace": namespace or "",
            "node_addresses": dict(zip(names, hosts, strict=True)),
        }
    )


def command(config_file: Path) -> list[str]:
    """haproxy in the foreground (its own session keeps it alive), checked and run from one file."""
    return [_haproxy(), "-db", "-f", str(config_file)]


def running(state: State) -> Forwarder | None:
    """The forwarder `up` started for this cluster, if that process is still the one listening."""
    try:
        data = json.loads(state.forwarder_file.read_text())
        fwd = Forwarder(
            int(data["pid"]),
            int(data["port"]),
            tuple(data["targets"]),
            data["namespace"],
            str(data.get("credentials", "")),  # a record from before the health checks had credentials
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_ours(fwd, _config_file(state)):
        return None
    return fwd


def ensure(state: State, targets: Sequence[str], namespace: str | None) -> Forwarder:
    """A forwarder to every one of `targets` for this cluster: the running one if it still fits, else a new one."""
    current = running(state)
    credentials = _link_credentials(state)
    # The same targets, credentials and configuration as it started with (a new release of the role's template
    # or defaults changes the last).
    fits = (
        current is not None
        and (current.targets, current.namespace, current.credentials) == (tuple(targets), namespace, credentials)
        and _started_config(state) == config(current.port, targets, namespace)
    )
    if current is not None and fits and _accepts(current.port):
        return current
    port = _previous_port(state)  # the user's kubeconfig names it: keep it when it is free
    if current is not None:
        stop(state)
    if port is None or not _free(port):
        port = _free_port()
    cfg = _config_file(state)
    cfg.write_text(config(port, targets, namespace))
    log_path = state.root / "forwarder.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command(cfg),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "CREDENTIALS_DIRECTORY": str(_credentials_dir(state))},
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives `up`, and a Ctrl-C in the user's shell does not reach it
            close_fds=True,
        )
    fwd = Forwarder(proc.pid, port, tuple(targets), namespace, credentials)
    deadline = time.monotonic() + START_SECONDS
    while not _accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise ProvisionerError(
                f"forwarder {LOOPBACK}:{port} -> {', '.join(targets)}",
                f"haproxy did not accept connections within {START_SECONDS} s (exit {proc.poll()})",
                f"read {log_path}",
            )
        time.sleep(0.1)
    record = {
        "pid": fwd.pid,
        "port": port,
        "targets": list(fwd.targets),
        "namespace": namespace,
        "credentials": credentials,
    }
    state.forwarder_file.write_text(json.dumps(record) + "\n")
    return fwd


def stop(state: State) -> bool:
    """Stop this cluster's forwarder; True when one was running."""
    fwd = running(state)
    state.forwarder_file.unlink(missing_ok=True)
    if fwd is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(fwd.pid, signal.SIGTERM)  # haproxy and anything it started
    deadline = time.monotonic() + 5
    # Until the port is free too: haproxy's first thread can exit (a zombie) while others still hold it.
    while (alive(fwd.pid) or not _free(fwd.port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(fwd.pid, signal.SIGKILL)
    return True


# --- internals -------------------------------------------------------------------------------------


def haproxy() -> str | None:
    """Debian's haproxy: on PATH, else where the role installs it from (/usr/sbin is not on every PATH)."""
    program = str(_role_defaults()["apiserver_lb_program"])
    return shutil.which("haproxy") or (program if Path(program).is_file() else None)


def _haproxy() -> str:
    path = haproxy()
    if path is None:
        raise ToolMissing(
            "haproxy",
            "the admin machine's loopback balancer in front of the apiservers needs it",
            "apt-get install haproxy",
        )
    return path


def _role_defaults() -> dict[str, Any]:
    return role_defaults(ROLE)


def _config_file(state: State) -> Path:
    return state.root / "forwarder.cfg"


def _started_config(state: State) -> str:
    """The configuration the running forwarder was started from ("" when the file is gone)."""
    try:
        return _config_file(state).read_text()
    except OSError:
        return ""


def _credentials_dir(state: State) -> Path:
    return state.root / "forwarder-credentials"


def _link_credentials(state: State) -> str:
    """The health checks' files, linked from the cluster PKI under the names the configuration gives them
    (as systemd hands them to a worker's haproxy); the sha256 of their contents."""
    directory = _credentials_dir(state)
    directory.mkdir(mode=0o700, exist_ok=True)
    digest = hashlib.sha256()
    names: dict[str, str] = _role_defaults()["apiserver_lb_credentials"]
    for name, file in sorted(names.items()):
        source = state.pki_dir / file
        try:
            digest.update(source.read_bytes())
        except OSError as err:
            raise ProvisionerError(
                f"forwarder health checks: {source}",
                f"cannot read it ({err.strerror})",
                "run `provisioner up`, which issues the cluster's certificates first",
            ) from err
        link = directory / name
        if not link.is_symlink() or link.readlink() != source:
            link.unlink(missing_ok=True)
            link.symlink_to(source)
    return digest.hexdigest()


def _is_ours(fwd: Forwarder, config_file: Path) -> bool:
    """The pid is alive and is still our haproxy on our file (a pid can be reused after a reboot)."""
    try:
        argv = Path(f"/proc/{fwd.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(config_file).encode() in argv and alive(fwd.pid)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as haproxy binds
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
