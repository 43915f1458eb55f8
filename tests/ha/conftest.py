"""The HA lab (inventories/ha/cluster.yaml: three masters, two workers), brought up once per session.

Marked `ha` (`./run-tests --ha`): it is not part of the default CI run. Like the default lab's session it
holds /tmp/provisioner-lab.lock for its whole length (one lab at a time on a machine), reuses a running
HA lab, and destroys the lab at the end only if it created it and PROVISIONER_KEEP_LAB is unset.

PROVISIONER_HA_FROM=grow (`./run-tests --ha-grow`): a lab it creates comes up as the HA spec's first master
and its workers, gets an object, and is grown with `scale --masters 3`; what follows is the same `up` with
the HA spec, which must then find nothing to change.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from halab import Grown, HaLab

from provisioner import artifacts, forwarder, lifecycle, paths, scaling, spec
from provisioner.events import EventBus
from provisioner.kube import Kubectl
from provisioner.providers import for_cluster
from provisioner.state import State

LOCK = Path("/tmp/provisioner-lab.lock")
SPEC = paths.REPO_ROOT / "inventories" / "ha" / "cluster.yaml"
FROM = os.environ.get("PROVISIONER_HA_FROM", "up")


def grow(cluster: spec.Cluster, state: State, workdir: Path) -> Grown:
    """The HA spec without its other masters, brought up, given an object, then `scale --masters 3`."""
    data = yaml.safe_load(SPEC.read_text())
    first = cluster.masters[0].name
    data["spec"]["nodes"] = [n for n in data["spec"]["nodes"] if n["role"] != "master" or n["name"] == first]
    one = workdir / "cluster.yaml"
    one.write_text(yaml.safe_dump(data, sort_keys=False))
    started = time.monotonic()
    lifecycle.up(spec.load(one), state, EventBus(), merge_kubeconfig=False)
    single = time.monotonic() - started
    kubectl = Kubectl(
        artifacts.artifact_set(cluster).bin / "kubectl",
        state.kubeconfig,
        for_cluster(cluster, state, EventBus()).command_prefix(),
    )
    kubectl.run("create", "namespace", "before-grow")
    kubectl.run("-n", "before-grow", "create", "configmap", "kept", "--from-literal=made=with-one-master")
    started = time.monotonic()
    result = scaling.scale(one, None, EventBus(), masters=len(cluster.masters))
    return Grown(one, single, time.monotonic() - started, result)


@pytest.fixture(scope="session")
def ha_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaLab]:
    cluster = spec.load(SPEC)
    state = State.for_cluster(cluster.name)
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        created = not all(m.state == "running" for m in for_cluster(cluster, state, EventBus()).status())
        grown = None
        try:
            if created and FROM == "grow":
                grown = grow(cluster, state, tmp_path_factory.mktemp("grow"))
            result = lifecycle.up(cluster, state, EventBus(), merge_kubeconfig=False)
        except BaseException:
            if created and not os.environ.get("PROVISIONER_KEEP_LAB"):
                lifecycle.destroy(cluster, state, EventBus())
            raise
        yield HaLab(cluster, state, result, created, grown)
        if created and not os.environ.get("PROVISIONER_KEEP_LAB"):
            lifecycle.destroy(cluster, state, EventBus())
            assert forwarder.running(state) is None
