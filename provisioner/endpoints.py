"""Which address each client of the cluster uses: the apiserver from the admin machine, from a worker and
on a master, and etcd's members. Everything that needs one of these asks here, so the choice is made once.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner import layout
from provisioner.spec import Cluster, Node

APISERVER_PORT = layout.PORTS["apiserver"]
# Components on a master (controller-manager, scheduler, the master's own kubectl) use their own apiserver.
LOCAL_APISERVER = f"https://127.0.0.1:{APISERVER_PORT}"


def admin_master(cluster: Cluster) -> Node:
    """The master the admin machine talks to.

    The first one for now, also as the target of the admin machine's loopback forwarder into an isolated
    lab (provisioner/forwarder.py): with several masters, losing the first still cuts the admin machine
    off until the forwarder spreads over all of them (issue #17's remaining work).
    """
    return cluster.masters[0]


def admin_apiserver(cluster: Cluster) -> str:
    """The apiserver URL of the admin kubeconfig, and what `up` waits for."""
    return f"https://{admin_master(cluster).address}:{APISERVER_PORT}"


def worker_apiserver(cluster: Cluster) -> str:
    """The apiserver URL of the workers' kubelet and kube-proxy kubeconfigs.

    With several masters, the load balancer on the worker's own loopback, which spreads over every master
    that answers, so no single master is a point of failure; with one, that master, and no balancer.
    """
    if layout.unit(layout.APISERVER_LB_UNIT).installed_with(len(cluster.masters)):
        return f"https://127.0.0.1:{layout.PORTS['apiserver_lb']}"
    return f"https://{cluster.masters[0].address}:{APISERVER_PORT}"


@dataclass(frozen=True)
class EtcdMember:
    """One member of the etcd cluster: its master's name, and the address its peer and client URLs use."""

    name: str
    address: str

    @property
    def peer_url(self) -> str:
        """Where the other members reach it: what it listens on and advertises, and its --initial-cluster entry."""
        return f"https://{self.address}:{layout.PORTS['etcd_peer']}"


def etcd_members(cluster: Cluster) -> list[EtcdMember]:
    """One member per master. A lone member has no peer and one client (the apiserver beside it), so it
    listens on loopback only; members of a cluster reach each other, and every apiserver reaches them all,
    on the node network."""
    masters = cluster.masters
    if len(masters) == 1:
        return [EtcdMember(masters[0].name, "127.0.0.1")]
    return [EtcdMember(m.name, str(m.address)) for m in masters]


def etcd_initial_cluster(members: list[EtcdMember]) -> str:
    """etcd's --initial-cluster: every member's name and peer URL (the unit's, and a restore's)."""
    return ",".join(f"{m.name}={m.peer_url}" for m in members)


def etcd_cluster_token(cluster: Cluster) -> str:
    """etcd's --initial-cluster-token: the cluster's name, so two clusters' members never take each other in."""
    return f"{cluster.name}-etcd"
