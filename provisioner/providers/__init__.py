"""Machine providers: where the cluster's hosts come from (Vagrant VMs or existing static hosts)."""

from __future__ import annotations

from provisioner.events import EventBus
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
