"""The HA lab (inventories/ha/cluster.yaml: three masters, two workers), brought up once per session.

Marked `ha` (`./run-tests --ha`): it is not part of the default CI run. Like the default lab's session it
holds /tmp/provisioner-lab.lock for its whole length (one lab at a time on a machine), reuses a running
HA lab, and destroys the lab at the end only if it created it and PROVISIONER_KEEP_LAB is unset.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from halab import HaLab

from provisioner import forwarder, lifecycle, paths, spec
from provisioner.events import EventBus
from provisioner.providers import for_cluster
from provisioner.state import State

LOCK = Path("/tmp/provisioner-lab.lock")
SPEC = paths.REPO_ROOT / "inventories" / "ha" / "cluster.yaml"


@pytest.fixture(scope="session")
def ha_lab() -> Iterator[HaLab]:
    cluster = spec.load(SPEC)
    state = State.for_cluster(cluster.name)
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        created = not all(m.state == "running" for m in for_cluster(cluster, state, EventBus()).status())
        try:
            result = lifecycle.up(cluster, state, EventBus(), merge_kubeconfig=False)
        except BaseException:
            if created and not os.environ.get("PROVISIONER_KEEP_LAB"):
                lifecycle.destroy(cluster, state, EventBus())
            raise
        yield HaLab(cluster, state, result, created)
        if created and not os.environ.get("PROVISIONER_KEEP_LAB"):
            lifecycle.destroy(cluster, state, EventBus())
            assert forwarder.running(state) is None
