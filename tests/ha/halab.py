"""The HA lab as its tests see it: the spec, its state, and the ways in (kubectl inside, the admin's, SSH)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner import artifacts, hosts
from provisioner.kube import Kubectl
from provisioner.lifecycle import UpResult
from provisioner.scaling import ScaleResult
from provisioner.spec import Cluster
from provisioner.state import State
from provisioner.verify.kube import Ssh


@dataclass(frozen=True)
class Grown:
    """How the lab came to three masters when it was grown (PROVISIONER_HA_FROM=grow)."""

    spec_file: Path  # the one-master spec, as `scale` rewrote it
    single_seconds: float  # `up` of the one-master cluster from nothing
    scale_seconds: float
    scaled: ScaleResult


@dataclass
class HaLab:
    cluster: Cluster
    state: State
    first_up: UpResult  # with the HA spec: from nothing, or right after the grow
    created: bool
    grown: Grown | None = None

    @property
    def prefix(self) -> list[str]:
        return self.first_up.prefix

    def kubectl(self) -> Kubectl:
        """Inside the lab, through the admin kubeconfig (the first master)."""
        return Kubectl(artifacts.artifact_set(self.cluster).bin / "kubectl", self.state.kubeconfig, self.prefix)

    def admin(self) -> Kubectl:
        """As the user's shell: the user kubeconfig, through the loopback balancer over every master."""
        return Kubectl(artifacts.artifact_set(self.cluster).bin / "kubectl", self.state.user_kubeconfig)

    def ssh(self) -> Ssh:
        options = hosts.ssh_options(
            self.state.known_hosts, strict=False, control_dir=self.state.ssh_control_dir, persist="120s", keepalive=5
        )
        return Ssh({h.name: h for h in hosts.load(self.state)}, self.prefix, options)
