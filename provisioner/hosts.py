"""One record per node and one way to reach it (compare testinfra's backends, which parse a host once).

`up` persists the hosts the provider reported into the state directory; `verify`, `ssh`, `scale` and the
benchmarks load that list instead of asking the machines again or reading the generated inventory back.
Every ssh command line and every set of SSH options (Ansible's, testinfra's, verify's) is built here, and
:class:`Ssh` is the one way provisioner itself runs a command on a node (verify, the key rotation, the bench).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioner.errors import ProvisionerError
from provisioner.state import State


@dataclass(frozen=True)
class HostConnection:
    """How to reach one node over SSH, as the machines report it (never guessed)."""

    name: str
    role: str
    address: str  # the node's address on the cluster network
    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_key: Path

    def ssh_argv(self, options: Sequence[str], prefix: Sequence[str] = (), extra: Sequence[str] = ()) -> list[str]:
        """The ssh command line that reaches this host; the remote command, if any, goes after it.

        The user travels as `-l USER` and `--` ends the options, so neither a user nor a host name that
        begins with `-` can reach ssh as an option (`-oProxyCommand=...`).
        """
        return [
            *prefix,
            "ssh",
            *options,
            *extra,
            "-i",
            str(self.ssh_key),
            "-p",
            str(self.ssh_port),
            "-l",
            self.ssh_user,
            "--",
            self.ssh_host,
        ]

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ssh_key": str(self.ssh_key)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> HostConnection:
        return cls(
            name=str(data["name"]),
            role=str(data["role"]),
            address=str(data["address"]),
            ssh_host=str(data["ssh_host"]),
            ssh_port=int(str(data["ssh_port"])),
            ssh_user=str(data["ssh_user"]),
            ssh_key=Path(str(data["ssh_key"])),
        )


def ssh_options(
    known_hosts: Path,
    *,
    strict: bool,
    control_dir: Path | None = None,
    persist: str = "300s",
    keepalive: int = 15,
    connect_timeout: int = 15,
) -> list[str]:
    """The OpenSSH options every connection to a node uses.

    strict: trust on first use, remembered in the cluster's known-hosts file, so a changed host key later
    stops the connection (static hosts). Otherwise no host key is kept: lab VMs are made again with fresh
    keys on the same addresses, inside a private namespace. One master connection per node persists,
    because each new SSH handshake costs seconds on an emulated VM (under `control_dir` when given;
    Ansible chooses its own path otherwise). A node that powers off sends no reset: keep-alives give up
    on its connection after three missed ones (`keepalive` seconds apart) instead of hanging.
    """
    if strict:
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        keys = ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
    else:
        keys = ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    control = ["-o", f"ControlPath={control_dir}/%C"] if control_dir is not None else []
    if control_dir is not None:
        control_dir.mkdir(parents=True, exist_ok=True)
    return [
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        *keys,
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPersist={persist}",
        *control,
        "-o",
        f"ServerAliveInterval={keepalive}",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "LogLevel=ERROR",
    ]


def save(state: State, hosts: Iterable[HostConnection]) -> None:
    """Remember the hosts that exist now (written by `up`, `scale` and `reset`)."""
    state.ensure()
    state.hosts_file.write_text(json.dumps([h.to_json() for h in hosts], indent=2) + "\n")


def load(state: State) -> list[HostConnection]:
    """The hosts `up` last reported, in spec order."""
    try:
        data = json.loads(state.hosts_file.read_text())
    except FileNotFoundError:
        raise ProvisionerError(
            str(state.hosts_file), "no host list: the cluster was never brought up", "run `provisioner up` first"
        ) from None
    except ValueError as exc:
        raise ProvisionerError(
            str(state.hosts_file), f"is not a host list ({exc})", "run `provisioner up` to write it again"
        ) from None
    return [HostConnection.from_json(h) for h in data]


class NodeCommandError(ProvisionerError):
    """A command run on a node over SSH failed."""


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
