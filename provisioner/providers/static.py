"""Existing hosts listed in the spec (bare metal, or any machine with SSH), reached with a key.

Nothing is created or destroyed: `create` only lists the hosts (`up`'s preflight then checks that each is
ready, as for every provider), `destroy` leaves them alone.
"""

from __future__ import annotations

from provisioner import preflight
from provisioner.events import Phase
from provisioner.hosts import HostConnection
from provisioner.providers.base import MachineStatus, Provider
from provisioner.spec import Node, SSHSpec


class StaticHosts(Provider):
    def _connection(self, node: Node) -> HostConnection:
        ssh = node.ssh or SSHSpec()
        assert ssh.key is not None, "the spec validator requires a key for every static host"
        return HostConnection(
            name=node.name,
            role=node.role,
            address=str(node.address),
            ssh_host=str(node.address),
            ssh_port=ssh.port,
            ssh_user=ssh.user,
            ssh_key=ssh.key,  # absolute since loading: spec.load resolves it against the spec file's folder
        )

    def create(self, nodes: list[Node] | None = None) -> list[HostConnection]:
        return self.hosts()

    def destroy(self, nodes: list[Node] | None = None) -> None:
        with Phase(self.bus, "destroy", "static hosts are not the provisioner's to remove; left as they are"):
            pass

    def hosts(self) -> list[HostConnection]:
        return [self._connection(n) for n in self.cluster.spec.nodes]

    def status(self) -> list[MachineStatus]:
        results = {r.name: r for r in preflight.probe(self.hosts(), self.command_prefix())}
        return [
            MachineStatus(
                n.name,
                n.role,
                "reachable" if results[n.name].ok else f"unreachable: {results[n.name].reason}",
                str(n.address),
            )
            for n in self.cluster.spec.nodes
        ]
