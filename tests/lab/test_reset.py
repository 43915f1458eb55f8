"""`provisioner reset` on the real lab: every node is left without what `up` installed, and a second
reset changes nothing. Runs last in the session (conftest orders it): the cluster is gone afterwards."""

from __future__ import annotations

import pytest
from labcluster import LabCluster

from provisioner import layout, lifecycle
from provisioner.events import EventBus
from provisioner.verify.kube import Ssh

pytestmark = [pytest.mark.lab, pytest.mark.cluster]

# What `up` installs, from the one table: every owned path, unit file, installed file and system user.
_PATHS = [
    *layout.OWNED_PATHS,
    *(f"{layout.DIRS.units}/{u.name}.service" for u in layout.UNITS),
    *sorted({a.target for a in layout.ARTIFACTS if a.roles}),
]
# The daemons the units run, and containerd's shims (the containers under them).
_DAEMONS = "|".join(
    sorted({u.binary.removeprefix("bin/") for u in layout.UNITS if u.binary} | {"containerd-shim-runc-v2"})
)
LEFTOVERS = (
    f"ls -d {' '.join(_PATHS)} 2>/dev/null;"
    f" for u in {' '.join(layout.SYSTEM_USERS)}; do getent passwd $u | sed 's/^/user /'; done;"
    # Full command lines ([/] keeps the probe's own shell from matching itself).
    f" pgrep -a -f '^[/]{layout.DIRS.bin.lstrip('/')}/({_DAEMONS})( |$)' | sed 's/^/process /';"
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
