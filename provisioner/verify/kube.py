"""How verify talks to the lab: SSH to nodes, HTTP probes, bounded waits (kubectl is provisioner.kube's).

Every call is a subprocess started under the lab's command prefix (``ip netns exec NAME``), so no
packet for the lab ever leaves from the host's own network namespace.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from provisioner.errors import ProvisionerError
from provisioner.hosts import HostConnection
from provisioner.kube import KubectlError
from provisioner.verify import probe

T = TypeVar("T")


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
class Ssh:
    """Runs shell commands on nodes with plain OpenSSH under the lab prefix, one master connection per node."""

    nodes: dict[str, HostConnection]
    prefix: Sequence[str] = ()
    options: Sequence[str] = field(default_factory=tuple)

    def command(self, node: str, script: str) -> list[str]:
        login = self.nodes[node]
        if login.ssh_user != "root":
            script = f"sudo -n sh -c {shlex.quote(script)}"
        return [*login.ssh_argv(self.options, self.prefix), script]

    def run(
        self, node: str, script: str, check: bool = True, timeout: float = 60, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a shell script on a node. Secrets go in `input`, never in the script: a failure names the script."""
        if node not in self.nodes:
            raise NodeCommandError(node, "not among the cluster's hosts", "check the node name against the spec")
        try:
            proc = subprocess.run(
                self.command(node, script), input=input, capture_output=True, timeout=timeout, check=False
            )
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
        argv = self.nodes[node].ssh_argv(self.options, self.prefix, extra=["-O", "exit"])
        subprocess.run(argv, capture_output=True, timeout=30, check=False)

    def text(self, node: str, script: str, timeout: float = 60, input: bytes | None = None) -> str:
        return self.run(node, script, timeout=timeout, input=input).stdout.decode(errors="replace").strip()


def http_get(prefix: Sequence[str], url: str, timeout: float = 10) -> str:
    """GET a URL from inside the lab's namespace (verify's probe script runs under the prefix); the body."""
    proc = subprocess.run(
        probe.local_argv(prefix, probe.get_args(url, timeout)),
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    if proc.returncode != 0:
        raise NotYet(f"GET {url}: {probe.failure(proc.stderr).text or proc.returncode}")
    return probe.read_answer(proc.stdout)[1]
