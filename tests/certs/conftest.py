"""The certificates lab: the default lab's spec with 2-hour leaf certificates (renewed within 30 minutes of
their end), brought up once per session (`./run-tests --certs`).

Like the other lab sessions it holds /tmp/provisioner-lab.lock for its whole length (one lab at a time on a
machine), reuses a running lab of the same name (its `up` then re-issues every leaf with the short lifetime),
and destroys the lab at the end only if it created it and PROVISIONER_KEEP_LAB is unset.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from certslab import CertsLab

from provisioner import lifecycle, paths, spec
from provisioner.events import EventBus
from provisioner.providers import for_cluster
from provisioner.state import State

LOCK = Path("/tmp/provisioner-lab.lock")
LIFETIMES = {"leafValidity": "2h", "renewBefore": "30m"}


@pytest.fixture(scope="session")
def certs_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertsLab]:
    data = yaml.safe_load(paths.default_spec().read_text())
    data["spec"]["pki"] = dict(LIFETIMES)
    spec_file = tmp_path_factory.mktemp("certs") / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    cluster = spec.load(spec_file)
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
        yield CertsLab(spec_file, cluster, state, result, created)
        if created and not os.environ.get("PROVISIONER_KEEP_LAB"):
            lifecycle.destroy(cluster, state, EventBus())
