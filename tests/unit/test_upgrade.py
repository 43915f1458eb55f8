"""`provisioner upgrade` before any node changes: the step the version-skew policy allows, what a node runs,
the order and batches, budgets that will stop a drain, the lock, and `--to` written into the spec."""

from __future__ import annotations

import shutil
from pathlib import Path

import clusters
import pytest

from provisioner import paths, spec, spec_edit, upgrade
from provisioner.spec import Node

OLD, NEW = "v1.36.3", "v1.37.2"


@pytest.mark.parametrize(
    ("running", "target", "said"),
    [
        ([OLD], NEW, None),
        ([NEW], NEW, None),
        ([OLD, NEW], NEW, None),  # an upgrade interrupted between two masters
        ([NEW], OLD, "v1.36.3 is older than v1.37.2, which the cluster runs: downgrades are not supported"),
        (["v1.35.1"], NEW, "more than one minor version after v1.35.1, which the cluster runs: upgrade one minor"),
        (["v1.35.1"], NEW, "to v1.36 first"),
        (["v1.37.0"], NEW, None),  # a patch release
    ],
)
def test_one_minor_version_up_at_a_time_and_never_down(running: list[str], target: str, said: str | None) -> None:
    problems = upgrade.step_problems(running, target)
    if said is None:
        assert problems == []
    else:
        assert any(said in p for p in problems), problems


def _node(name: str, role: str) -> Node:
    return Node(name=name, role=role, address=None)


def test_what_a_node_runs_is_read_from_its_binary_and_its_processes() -> None:
    text = (
        "version v1.36.3\n"
        "exe containerd /usr/local/bin/containerd\n"
        "exe kubelet /usr/local/bin/kubelet (deleted)\n"
        "down kube-proxy\n"
    )
    state = upgrade.parse_node_state(_node("worker-1", "worker"), text)
    assert state == upgrade.NodeState("worker-1", "worker", "v1.36.3", ("kubelet",), ("kube-proxy",))
    assert not state.at("v1.36.3")  # its kubelet still runs the binary it replaced
    assert upgrade.parse_node_state(_node("worker-1", "worker"), "version v1.37.2\n").at("v1.37.2")
    script = upgrade.node_script("master", ["etcd", "kube-apiserver"])
    assert "/usr/local/bin/kube-apiserver --version" in script and "readlink /proc/$pid/exe" in script
    assert "kubelet" in upgrade.node_script("worker", ["kubelet"])


def _states(versions: dict[str, str], stale: tuple[str, ...] = ()) -> list[upgrade.NodeState]:
    return [
        upgrade.NodeState(
            name, "master" if name.startswith("master") else "worker", v, stale if name == "worker-2" else ()
        )
        for name, v in versions.items()
    ]


@pytest.fixture
def ha() -> spec.Cluster:
    return upgrade.with_version(clusters.ha(), NEW)


def test_masters_first_in_order_then_workers_in_batches_and_done_nodes_skipped(ha: spec.Cluster) -> None:
    nodes = _states(
        {"master-1": NEW, "master-2": OLD, "master-3": OLD, "worker-1": OLD, "worker-2": NEW, "worker-3": OLD}
    )
    planned = upgrade.plan(ha, nodes, batch=2)
    assert planned.masters == ("master-2", "master-3")
    assert planned.workers == (("worker-1", "worker-3"),)
    assert planned.running == (OLD, NEW) and planned.count == 4
    one = upgrade.plan(ha, _states({"master-1": NEW, "worker-1": OLD, "worker-2": NEW}, stale=("kubelet",)), 1)
    assert one.workers == (("worker-1",), ("worker-2",))  # worker-2 reports the target but runs the old kubelet
    assert upgrade.plan(ha, _states({"master-1": NEW, "worker-1": NEW}), 1).empty


def test_a_kubelet_ahead_of_the_control_plane_a_stopped_service_or_no_version_is_refused(ha: spec.Cluster) -> None:
    target = upgrade.with_version(ha, NEW)
    with pytest.raises(upgrade.UpgradeError) as ahead:
        upgrade.plan(target, _states({"master-1": "v1.36.3", "worker-1": "v1.37.0"}), 1)
    assert "worker-1: its kubelet v1.37.0 is newer than every apiserver" in ahead.value.message()
    stopped = [upgrade.NodeState("master-1", "master", OLD, (), ("etcd",))]
    with pytest.raises(upgrade.UpgradeError) as down:
        upgrade.plan(target, stopped, 1)
    assert "services not running on master-1 (etcd)" in down.value.message()
    with pytest.raises(upgrade.UpgradeError) as blank:
        upgrade.plan(target, _states({"master-1": "", "worker-1": OLD}), 1)
    assert "master-1: the installed binary reports no version" in blank.value.message()
    with pytest.raises(upgrade.UpgradeError) as older:
        upgrade.plan(upgrade.with_version(ha, OLD), _states({"master-1": NEW}), 1)
    assert "refused before anything changed" in older.value.message() and "downgrades" in older.value.message()


def _pdb(name: str, allowed: int, labels: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"matchLabels": labels}},
        "status": {"disruptionsAllowed": allowed, "currentHealthy": 1, "desiredHealthy": 1},
    }


def _pod(name: str, node: str, labels: dict[str, str]) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "shop", "labels": labels}, "spec": {"nodeName": node}}


def test_budgets_that_allow_no_disruption_and_cover_a_pod_on_a_moving_worker_are_named() -> None:
    pdbs = {"items": [_pdb("web", 0, {"app": "web"}), _pdb("api", 1, {"app": "api"}), _pdb("db", 0, {"app": "db"})]}
    pods = {"items": [_pod("web-1", "worker-1", {"app": "web"}), _pod("db-1", "worker-9", {"app": "db"})]}
    said = upgrade.pdb_blockers(pdbs, pods, ["worker-1", "worker-2"])
    assert len(said) == 1 and said[0].startswith("PodDisruptionBudget shop/web allows no disruption now")
    assert "covers web-1 on worker-1" in said[0]


def test_a_refused_eviction_names_the_pod() -> None:
    stderr = (
        "evicting pod shop/web-1\n"
        'error when evicting pods/"web-1" -n "shop" (will retry after 5s): Cannot evict pod as it would violate '
        "the pod's disruption budget.\n"
        'error when evicting pods/"web-1" -n "shop" (will retry after 5s): Cannot evict pod as it would violate '
        "the pod's disruption budget.\n"
        'There are pending pods in node "worker-1" when an error occurred: error when waiting for pod "web-1" '
        "terminating: global timeout reached: 1m0s\n"
    )
    assert upgrade.blocked_pods(stderr) == ["shop/web-1"]


def test_the_lock_names_its_holder_and_only_a_gone_process_of_this_machine_gives_it_up() -> None:
    holder = upgrade.Holder(NEW, "admin-box", 4242, "2026-12-02T12:00:00+00:00")
    assert upgrade.Holder.parse(holder.text()) == holder
    assert upgrade.Holder.parse("not json") is None
    assert holder.gone("admin-box", alive=lambda pid: False)
    assert not holder.gone("admin-box", alive=lambda pid: True)
    assert not holder.gone("another-box", alive=lambda pid: False)  # cannot tell from here


def test_to_is_checked_like_the_spec_field_and_written_keeping_the_file(tmp_path: Path) -> None:
    cluster = spec.load(paths.default_spec())
    with pytest.raises(upgrade.UpgradeError) as bad:
        upgrade.target_cluster(cluster, "v1.99.0")
    assert "--to: 'v1.99.0' is not supported; use one of" in bad.value.message()
    assert upgrade.target_cluster(cluster, OLD).spec.kubernetes.version == OLD
    path = tmp_path / "cluster.yaml"
    shutil.copy(paths.default_spec(), path)
    text = path.read_text()
    assert spec_edit.set_version(path, OLD)
    assert spec.load(path).spec.kubernetes.version == OLD
    assert not spec_edit.set_version(path, OLD)
    # Only the version changed: comments and everything else as they were.
    changed = [(a, b) for a, b in zip(text.splitlines(), path.read_text().splitlines(), strict=False) if a != b]
    assert len(changed) <= 1 and all(OLD in b for _, b in changed), changed
