"""The certificates lab as its tests see it: the spec file, its state, and the ways in (kubectl, SSH)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner import artifacts, hosts, spec
from provisioner.kube import Kubectl
from provisioner.lifecycle import UpResult
from provisioner.state import State
from provisioner.verify.kube import Ssh


@dataclass
class CertsLab:
    spec_file: Path
    cluster: spec.Cluster
    state: State
    first_up: UpResult
    created: bool

    def kubectl(self) -> Kubectl:
        return Kubectl(
            artifacts.artifact_set(self.cluster).bin / "kubectl", self.state.kubeconfig, self.first_up.prefix
        )

    def ssh(self) -> Ssh:
        options = hosts.ssh_options(
            self.state.known_hosts, strict=False, control_dir=self.state.ssh_control_dir, persist="120s"
        )
        return Ssh({h.name: h for h in hosts.load(self.state)}, self.first_up.prefix, options)
