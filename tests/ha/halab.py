"""The HA lab as its tests see it: the spec, its state, and the ways in (kubectl inside, the admin's, SSH)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from provisioner import artifacts, endpoints, hosts
from provisioner.kube import Kubectl, KubectlError
from provisioner.lifecycle import UpResult
from provisioner.scaling import ScaleResult
from provisioner.spec import Cluster
from provisioner.state import State
from provisioner.verify import ha
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


# How long the lab may take to be whole again after a test powered masters off. Seen on 2 emulated cores:
# about 20 min after all three apiservers had restarted (the rbac/bootstrap-roles hook waiting on an etcd that
# answered each read in 0.8 s while three members caught up and three apiservers listed everything).
SETTLE_SECONDS = 1800.0


def settle(lab: HaLab, timeout: float = SETTLE_SECONDS) -> float:
    """Seconds until every master's apiserver is ready (its own /readyz, etcd's checks included) and every
    etcd member healthy; fails after `timeout` naming what was not. What the tests after a broken one need."""
    started = time.monotonic()
    kubectl, ssh = lab.kubectl(), lab.ssh()
    masters = lab.cluster.masters
    waiting: list[str] = []
    while True:
        waiting = []
        for master in masters:
            server = f"https://{master.address}:{endpoints.APISERVER_PORT}"
            try:
                kubectl.run("--server", server, "get", "--raw", "/readyz", timeout=30)
            except KubectlError as exc:
                waiting.append(f"{master.name}'s apiserver ({exc.cause[:120]})")
        health = ha.etcd_health_via(ssh, lab.cluster, masters[0])
        waiting += [f"{name}'s etcd member" for name, ok in health.items() if not ok]
        if not waiting:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"not whole again after {timeout:.0f}s: {'; '.join(waiting)}"
        time.sleep(10)
