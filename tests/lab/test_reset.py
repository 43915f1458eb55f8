"""`provisioner reset` on the real lab: every node is left without what `up` installed, and a second
reset changes nothing. Runs last in the session (conftest orders it): the cluster is gone afterwards."""

from __future__ import annotations

import pytest
from labcluster import LabCluster

from provisioner import lifecycle
from provisioner.events import EventBus
from provisioner.verify.kube import Ssh

pytestmark = [pytest.mark.lab, pytest.mark.cluster]

LEFTOVERS = (
    "ls -d /etc/kubernetes /etc/containerd /etc/cni /opt/cni /var/lib/etcd /var/lib/kubelet /var/lib/containerd"
    " /var/lib/provisioner /etc/systemd/system/kubelet.service /etc/systemd/system/etcd.service"
    " /etc/systemd/system/pod-network.service /usr/local/bin/kubelet /usr/local/bin/kube-apiserver 2>/dev/null;"
    # Full command lines ([/] keeps the probe's own shell from matching itself).
    " pgrep -a -f '^[/]usr/local/bin/(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy"
    "|containerd|containerd-shim-runc-v2)( |$)' | sed 's/^/process /';"
    " ip -o link show cni0 2>/dev/null | sed 's/^/link /';"
    " ip route show root {pod_subnet} | sed 's/^/route /';"
    " iptables-save | grep -E 'KUBE-SERVICES|CNI-|{pod_subnet}' | sed 's/^/rule /';"
    " true"
)


def test_reset_removes_everything_up_installed_and_is_safe_twice(lab_cluster: LabCluster, lab_ssh: Ssh) -> None:
    lab = lab_cluster
    first = lifecycle.reset(lab.cluster, lab.state, EventBus())
    assert all(stats.changed > 0 for stats in first.hosts.values()), first.hosts

    probe = LEFTOVERS.format(pod_subnet=lab.cluster.spec.network.pod_subnet)
    left = {node.name: lab_ssh.text(node.name, probe) for node in lab.cluster.spec.nodes}
    assert left == dict.fromkeys(left, ""), left
    assert not lab.state.kubeconfig.exists()

    again = lifecycle.reset(lab.cluster, lab.state, EventBus())
    assert {h: s.changed for h, s in again.hosts.items()} == dict.fromkeys(again.hosts, 0)
