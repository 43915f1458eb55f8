"""The upgrade lab: the default lab's spec at the older pinned release (v1.36.3), brought up once per session
(`./run-tests --upgrade`); the test upgrades it to v1.37.2.

It holds /tmp/provisioner-lab.lock for its whole length (one lab at a time on a machine). A running lab of the
same name is destroyed first: a cluster cannot be taken back to the older release. The lab is destroyed at the
end unless PROVISIONER_KEEP_LAB is set.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from provisioner import lifecycle, paths, spec
from provisioner.events import EventBus
from provisioner.lifecycle import UpResult
from provisioner.state import State

LOCK = Path("/tmp/provisioner-lab.lock")
FROM = "v1.36.3"


@pytest.fixture(scope="session")
def old_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, UpResult]]:
    data = yaml.safe_load(paths.default_spec().read_text())
    data["spec"]["kubernetes"]["version"] = FROM
    spec_file = tmp_path_factory.mktemp("upgrade") / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    cluster = spec.load(spec_file)
    state = State.for_cluster(cluster.name)
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        lifecycle.destroy(cluster, state, EventBus())
        try:
            yield spec_file, lifecycle.up(cluster, state, EventBus(), merge_kubeconfig=False)
        finally:
            if not os.environ.get("PROVISIONER_KEEP_LAB"):
                lifecycle.destroy(cluster, state, EventBus())
