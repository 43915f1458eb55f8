"""How verify talks to the lab: kubectl (JSON output), SSH to nodes, HTTP probes, bounded waits.

Every call is a subprocess started under the lab's command prefix (``ip netns exec NAME``), so no
packet for the lab ever leaves from the host's own network namespace.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from provisioner.errors import ProvisionerError

T = TypeVar("T")


class KubectlError(ProvisionerError):
    """A kubectl command failed (API unreachable, object rejected, ...)."""


class NodeCommandError(ProvisionerError):
    """A command run on a node over SSH failed."""


class CheckFailed(Exception):
    """A promise is broken. The message says what was expected and what was seen."""


class NotYet(Exception):
    """Raised by a probe passed to :func:`wait_for`: the condition does not hold yet (message: what was seen)."""


def wait_for(what: str, probe: Callable[[], T], timeout: float, interval: float = 2.0) -> T:
    """Call ``probe`` until it returns; give up after ``timeout`` seconds naming what was awaited.

    A probe says "not yet" by raising :class:`NotYet`; a failing kubectl or SSH call counts as not yet
    too, because the API or a node being briefly away is exactly what self-healing checks go through.
    """
    deadline = time.monotonic() + timeout
    last = "nothing observed yet"
    while True:
        try:
            return probe()
        except NotYet as exc:
            last = str(exc) or last
        except (KubectlError, NodeCommandError) as exc:
            last = exc.message()
        if time.monotonic() >= deadline:
            raise CheckFailed(f"waited {timeout:.0f}s for {what}; last seen: {last}")
        time.sleep(interval)


@dataclass(frozen=True)
class Kubectl:
    """kubectl from the artifact set, pointed at the cluster's admin kubeconfig."""

    binary: Path
    kubeconfig: Path
    prefix: Sequence[str] = ()

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                self.command(*args), input=input, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise KubectlError(
                f"kubectl {' '.join(args)}", f"no answer within {timeout:.0f}s", "check that the apiserver is up"
            ) from None
        if check and proc.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)}",
                proc.stderr.strip() or f"exit code {proc.returncode}",
                "check the cluster with `provisioner status` and the admin kubeconfig",
            )
        return proc

    def json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.run(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, docs: Sequence[dict[str, Any]], namespace: str | None = None) -> None:
        args = ["apply", "-f", "-"] + ([f"--namespace={namespace}"] if namespace else [])
        self.run(*args, input=yaml.safe_dump_all(docs, sort_keys=False))


@dataclass(frozen=True)
class NodeLogin:
    """SSH details of one node, as the generated inventory holds them."""

    name: str
    role: str
    host: str
    port: int
    user: str
    key: str
    address: str


def read_inventory(path: Path) -> dict[str, NodeLogin]:
    """Nodes of the generated Ansible inventory (provisioner/inventory.py writes it)."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ProvisionerError(
            str(path), "the generated inventory does not exist", "bring the cluster up first with `provisioner up`"
        ) from None
    nodes: dict[str, NodeLogin] = {}

    def walk(group: dict[str, Any], role: str | None) -> None:
        for name, hv in (group.get("hosts") or {}).items():
            hv = hv or {}
            nodes[name] = NodeLogin(
                name=name,
                role=str(hv.get("node_role") or role or ""),
                host=str(hv.get("ansible_host", name)),
                port=int(hv.get("ansible_port", 22)),
                user=str(hv.get("ansible_user", "root")),
                key=str(hv.get("ansible_ssh_private_key_file", "")),
                address=str(hv.get("node_address", hv.get("ansible_host", name))),
            )
        for child_name, child in (group.get("children") or {}).items():
            child_role = {"masters": "master", "workers": "worker"}.get(child_name, role)
            walk(child or {}, child_role)

    walk((data or {}).get("all", {}), None)
    return nodes


@dataclass(frozen=True)
class Ssh:
    """Runs shell commands on nodes with plain OpenSSH under the lab prefix, one master connection per node."""

    nodes: dict[str, NodeLogin]
    prefix: Sequence[str] = ()
    options: Sequence[str] = field(default_factory=tuple)

    def command(self, node: str, script: str) -> list[str]:
        login = self.nodes[node]
        if login.user != "root":
            script = f"sudo -n sh -c {shlex.quote(script)}"
        key = ["-i", login.key] if login.key else []
        return [
            *self.prefix,
            "ssh",
            *self.options,
            *key,
            "-p",
            str(login.port),
            f"{login.user}@{login.host}",
            script,
        ]

    def run(
        self, node: str, script: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        if node not in self.nodes:
            raise NodeCommandError(node, "not in the generated inventory", "check the node name against the spec")
        try:
            proc = subprocess.run(self.command(node, script), capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise NodeCommandError(
                f"{node}: {script}", f"no answer within {timeout:.0f}s", "check that the node is up"
            ) from None
        if check and proc.returncode != 0:
            raise NodeCommandError(
                f"{node}: {script}",
                proc.stderr.decode(errors="replace").strip() or f"exit code {proc.returncode}",
                "read the node's journal (`journalctl -u UNIT`)",
            )
        return proc

    def close(self, node: str) -> None:
        """Stop the shared connection to a node (before it reboots, so no client reuses a dead one)."""
        login = self.nodes[node]
        subprocess.run(
            [*self.prefix, "ssh", *self.options, "-p", str(login.port), "-O", "exit", f"{login.user}@{login.host}"],
            capture_output=True,
            timeout=30,
            check=False,
        )

    def text(self, node: str, script: str, timeout: float = 60) -> str:
        return self.run(node, script, timeout=timeout).stdout.decode(errors="replace").strip()


def ssh_options(control_dir: Path, known_hosts: Path) -> list[str]:
    """Options shared by verify's own SSH calls and by testinfra's.

    Host keys are learnt on first use into the cluster's own known-hosts file (a destroyed lab takes
    that file with it); ControlPersist keeps one connection per node because each new SSH handshake
    costs seconds on an emulated VM.
    """
    return [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=15",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "ControlMaster=auto",
        "-o",
        "ControlPersist=120s",
        "-o",
        f"ControlPath={control_dir}/%C",
        "-o",
        "LogLevel=ERROR",
        # A node that powers off sends no reset: give up on its connection after 15 s instead of hanging.
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]


_HTTP_GET = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        sys.stdout.write(r.read().decode(errors="replace"))
except urllib.error.HTTPError as exc:
    sys.stderr.write(f"HTTP {exc.code}: {exc.read().decode(errors='replace').strip()}")
    sys.exit(1)
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
"""


def http_get(prefix: Sequence[str], url: str, timeout: float = 10) -> str:
    """GET a URL from inside the lab's namespace (a short Python child process runs under the prefix)."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", _HTTP_GET, url, str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    if proc.returncode != 0:
        raise NotYet(f"GET {url}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout
