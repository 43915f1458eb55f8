"""Machine providers: where the cluster's hosts come from (Vagrant VMs or existing static hosts)."""

from __future__ import annotations

from provisioner.errors import ProvisionerError
from provisioner.events import EventBus
from provisioner.hosts import Ssh, ssh_options
from provisioner.hosts import load as load_hosts
from provisioner.providers.base import Provider
from provisioner.spec import Cluster, StaticProvider
from provisioner.state import State


def for_cluster(cluster: Cluster, state: State, bus: EventBus) -> Provider:
    """The provider the spec names. Heavy dependencies load only for the provider in use."""
    if isinstance(cluster.spec.provider, StaticProvider):
        from provisioner.providers.static import StaticHosts

        return StaticHosts(cluster, state, bus)
    from provisioner.providers.vagrant import VagrantLab

    return VagrantLab(cluster, state, bus)


def node_ssh(cluster: Cluster, state: State, bus: EventBus) -> Ssh:
    """SSH to every node `up` recorded, under the lab's prefix (host keys kept and checked for static hosts)."""
    if not state.hosts_file.is_file():
        raise ProvisionerError(
            f"cluster {cluster.name}", f"has no host list under {state.root}", "bring it up first with `provisioner up`"
        )
    static = isinstance(cluster.spec.provider, StaticProvider)
    options = ssh_options(state.known_hosts, strict=static, control_dir=state.ssh_control_dir)
    return Ssh({h.name: h for h in load_hosts(state)}, for_cluster(cluster, state, bus).command_prefix(), options)
