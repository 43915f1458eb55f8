"""The shared real-lab fixture: the default spec's cluster, brought up once per test session.

`lab_cluster` runs `lifecycle.up` on the default lab (1 master, 2 workers). An already running lab
is reused (up on it converges, normally changing nothing). The lab is destroyed at the end only if
this session created it and PROVISIONER_KEEP_LAB is unset.

The whole session holds /tmp/provisioner-lab.lock: only one lab may run on a machine at a time.
Modules that need the lock use the `lab_lock` fixture below rather than locking again: a second
flock on the same file from this process would wait for ever.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from labcluster import LabCluster

from provisioner import forwarder, hosts, lifecycle, paths, spec
from provisioner.events import EventBus, Recorder
from provisioner.lifecycle import UpResult
from provisioner.providers import for_cluster
from provisioner.state import State
from provisioner.verify.kube import Ssh

LOCK = Path("/tmp/provisioner-lab.lock")
KEEP_ENV = "PROVISIONER_KEEP_LAB"


# A user's kubeconfig with a cluster of their own, as the session finds it before `up` merges into it.
USER_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "elsewhere", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "admin", "user": {"token": "not-a-real-token"}}],
    "contexts": [{"name": "elsewhere", "context": {"cluster": "elsewhere", "user": "admin"}}],
    "current-context": "elsewhere",
}


@dataclass
class LabSession:
    lab: LabCluster
    first_up: UpResult
    events: Recorder
    created: bool
    user_kubeconfig: Path | None  # the kubeconfig the session's `up` merged into (None: a reused lab's own)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Machine tests first: they create and destroy a lab of their own (same namespace name), which
    must be over before this session's shared lab comes up. Both hold the one session-wide lab lock.
    The scale test after the others (it changes the workers, and ends back at the default shape), then
    the reset test last: the cluster is gone after it."""
    lab_dir = Path(__file__).parent

    def key(item: pytest.Item) -> tuple[int, int]:
        in_lab = lab_dir in item.path.parents
        order = {"test_machines.py": 0, "test_scale.py": 2, "test_reset.py": 3}  # reset takes the cluster away: last
        return (int(in_lab), order.get(item.path.name, 1))

    items.sort(key=key)


@pytest.fixture(scope="session")
def lab_lock() -> Iterator[None]:
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def lab_session(lab_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    """A lab this session creates merges its context into a user kubeconfig of the session's own
    (holding another cluster), and destroying it must leave that file as it was. A running lab is
    reused and keeps its context wherever its own `up` merged it."""
    cluster = spec.load(paths.default_spec())
    state = State.for_cluster(cluster.name)
    events = Recorder()
    bus = EventBus()
    bus.subscribe(events)
    existed = all(m.state == "running" for m in for_cluster(cluster, state, bus).status())
    created = not existed
    user_kubeconfig = None
    if created:
        user_kubeconfig = tmp_path_factory.mktemp("home") / ".kube" / "config"
        user_kubeconfig.parent.mkdir()
        user_kubeconfig.write_text(yaml.safe_dump(USER_KUBECONFIG, sort_keys=False))
    try:
        result = lifecycle.up(cluster, state, bus, merge_kubeconfig=user_kubeconfig)
    except BaseException:
        if created and not os.environ.get(KEEP_ENV):
            lifecycle.destroy(cluster, state, EventBus())
        raise
    lab = LabCluster(cluster, state, result.prefix, result.kubeconfig, result.kubectl)
    yield LabSession(lab, result, events, created, user_kubeconfig)
    if created and not os.environ.get(KEEP_ENV):
        lifecycle.destroy(cluster, state, EventBus())
        assert user_kubeconfig is not None
        left = yaml.safe_load(user_kubeconfig.read_text())
        assert left == USER_KUBECONFIG, f"destroy left {user_kubeconfig} changed: {left}"
        assert forwarder.running(state) is None, "destroy left the loopback forwarder running"


@pytest.fixture(scope="session")
def lab_cluster(lab_session: LabSession) -> LabCluster:
    return lab_session.lab


@pytest.fixture(scope="session")
def lab_ssh(lab_cluster: LabCluster) -> Ssh:
    """SSH to the lab's nodes as verify does: the host list `up` wrote, the one set of SSH options."""
    state = lab_cluster.state
    options = hosts.ssh_options(state.known_hosts, strict=False, control_dir=state.ssh_control_dir, persist="120s")
    return Ssh({h.name: h for h in hosts.load(state)}, lab_cluster.prefix, options)


@pytest.fixture(scope="session")
def user_kubeconfig(lab_session: LabSession) -> Path | None:
    return lab_session.user_kubeconfig


@pytest.fixture(scope="session")
def first_up(lab_session: LabSession) -> UpResult:
    """What the session's own `up` reported (phases, timings, changed counts)."""
    return lab_session.first_up
