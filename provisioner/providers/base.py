"""The small interface every provider implements (compare molecule's driver/base.py)."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from provisioner.errors import MachineError
from provisioner.events import EventBus
from provisioner.hosts import HostConnection
from provisioner.spec import Cluster, Node
from provisioner.state import State


@dataclass(frozen=True)
class MachineStatus:
    name: str
    role: str
    state: str  # running, shutoff, not created, reachable, unreachable, ...
    address: str


class Provider(abc.ABC):
    def __init__(self, cluster: Cluster, state: State, bus: EventBus) -> None:
        self.cluster = cluster
        self.state = state
        self.bus = bus

    @abc.abstractmethod
    def create(self, nodes: list[Node] | None = None) -> list[HostConnection]:
        """Bring the given nodes (default: all in the spec) up and reachable by SSH; return the SSH details
        of every node that exists now (what `hosts()` would say, without asking the machines again)."""

    @abc.abstractmethod
    def destroy(self, nodes: list[Node] | None = None) -> None:
        """Remove the given nodes (default: everything this provider created). Safe to run twice."""

    @abc.abstractmethod
    def hosts(self) -> list[HostConnection]:
        """SSH details of every node that exists, read from the machines themselves."""

    @abc.abstractmethod
    def status(self) -> list[MachineStatus]:
        """Each node's state and address."""

    def command_prefix(self) -> list[str]:
        """Prefix for commands that must talk to the lab (e.g. `ip netns exec NAME`); empty if none."""
        return []

    def power_off(self, node: Node) -> None:
        """Cut a machine's power at once (no shutdown): what losing a host looks like. `create` starts it again."""
        raise MachineError(
            node.name, "this provider cannot power machines off and on", "power the host off by hand to test this"
        )

    def lab_namespace(self) -> str | None:
        """The network namespace the lab lives in (the admin machine reaches it only through it); None if none."""
        return None

    def artifact_server_address(self) -> str | None:
        """Where the admin machine can serve artifacts over HTTP to every node (under the command prefix);
        None: push them over SSH instead (static hosts: no port of ours is assumed reachable from them)."""
        return None
