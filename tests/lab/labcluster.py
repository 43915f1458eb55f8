"""The running lab cluster as the lab tests see it: the spec, its state, and the cluster's one kubectl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioner.kube import Kubectl
from provisioner.spec import Cluster
from provisioner.state import State


@dataclass(frozen=True)
class LabCluster:
    cluster: Cluster
    state: State
    prefix: list[str]
    kubeconfig: Path
    kubectl_path: Path

    @property
    def client(self) -> Kubectl:
        return Kubectl(self.kubectl_path, self.kubeconfig, self.prefix)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.client.run(*args, input=input, check=check, timeout=timeout)
