"""`scale` edits the spec file: new workers get free names and addresses; comments survive."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from provisioner import hosts, paths, scaling, spec, spec_edit
from provisioner.errors import MachineError, SpecError
from provisioner.events import EventBus
from provisioner.providers import for_cluster
from provisioner.providers.vagrant import generate_ssh_key
from provisioner.state import State


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    shutil.copy(paths.default_spec(), path)
    return path


def test_scale_up_appends_workers_with_free_addresses(spec_file: Path) -> None:
    plan = spec_edit.set_worker_count(spec_file, 4)
    assert plan.added == ["worker-3", "worker-4"]
    cluster = spec.load(spec_file)
    assert [str(n.address) for n in cluster.workers] == [
        "192.168.56.11",
        "192.168.56.12",
        "192.168.56.13",
        "192.168.56.14",
    ]
    assert cluster.node("worker-4").memory == cluster.node("worker-1").memory
    text = spec_file.read_text()
    assert "# The default lab" in text and "# pinned;" in text  # the user's comments are kept


def test_scale_down_removes_newest_workers_first(spec_file: Path) -> None:
    spec_edit.set_worker_count(spec_file, 3)
    plan = spec_edit.set_worker_count(spec_file, 1)
    assert plan.removed == ["worker-3", "worker-2"]
    assert [n.name for n in spec.load(spec_file).workers] == ["worker-1"]


def test_scale_to_same_count_changes_nothing(spec_file: Path) -> None:
    before = spec_file.read_text()
    assert spec_edit.set_worker_count(spec_file, 2).empty
    assert spec_file.read_text() == before


def test_scale_below_one_worker_is_refused(spec_file: Path) -> None:
    with pytest.raises(SpecError) as info:
        spec_edit.set_worker_count(spec_file, 0)
    assert "at least 1 worker" in info.value.problems[0]


def test_reused_name_after_scale_down_keeps_pod_cidr_unique(spec_file: Path) -> None:
    spec_edit.set_worker_count(spec_file, 1)
    spec_edit.set_worker_count(spec_file, 2)
    cluster = spec.load(spec_file)
    assert len(set(cluster.pod_cidrs.values())) == len(cluster.spec.nodes)


def test_after_scale_down_the_generated_inventory_names_only_the_nodes_left(spec_file: Path, tmp_path: Path) -> None:
    """verify reads the host list and the host checks the generated inventory: removed workers must be gone
    from both (the bench found host checks failing with "No route to host" against workers scaled away)."""
    key = tmp_path / "id_ed25519"
    generate_ssh_key(key)
    data = yaml.safe_load(spec_file.read_text())
    data["spec"]["provider"] = {"type": "static"}
    data["spec"]["nodes"].append({**data["spec"]["nodes"][-1], "name": "worker-3", "address": "192.168.56.13"})
    for node in data["spec"]["nodes"]:
        node["ssh"] = {"user": "root", "key": str(key)}
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    state = State(tmp_path / "state").ensure()
    # What `up` wrote: every host the provider reported.
    hosts.save(state, for_cluster(spec.load(spec_file), state, EventBus()).hosts())
    scaling.write_inventory(spec_file, state, EventBus())
    assert _inventory_hosts(state) == ["master", "worker-1", "worker-2", "worker-3"]

    spec_edit.set_worker_count(spec_file, 1)
    scaling.write_inventory(spec_file, state, EventBus())
    assert _inventory_hosts(state) == ["master", "worker-1"]
    assert [h.name for h in hosts.load(state)] == ["master", "worker-1"]


def _inventory_hosts(state: State) -> list[str]:
    groups = yaml.safe_load(state.inventory_file.read_text())["all"]["children"]["k8s_cluster"]["children"]
    return sorted(name for group in groups.values() for name in group["hosts"])


def test_grown_masters_are_listed_after_the_last_master_with_the_next_addresses(spec_file: Path) -> None:
    plan = spec_edit.set_master_count(spec_file, 3)
    assert plan.added == ["master-2", "master-3"]
    cluster = spec.load(spec_file)
    assert [n.name for n in cluster.spec.nodes] == ["master", "master-2", "master-3", "worker-1", "worker-2"]
    assert [str(n.address) for n in cluster.masters] == ["192.168.56.10", "192.168.56.13", "192.168.56.14"]
    assert cluster.node("master-3").memory == cluster.node("master").memory
    assert cluster.masters[0].name == "master"  # the addons' master and the admin's first target stay
    assert "# The default lab" in spec_file.read_text()


def test_a_one_master_ha_lab_grows_into_exactly_the_ha_lab(tmp_path: Path) -> None:
    """The HA tier's premise: the HA spec without master-2 and master-3, grown to 3, is the HA spec."""
    ha = paths.REPO_ROOT / "inventories" / "ha" / "cluster.yaml"
    data = yaml.safe_load(ha.read_text())
    data["spec"]["nodes"] = [n for n in data["spec"]["nodes"] if n["name"] not in ("master-2", "master-3")]
    one = tmp_path / "cluster.yaml"
    one.write_text(yaml.safe_dump(data, sort_keys=False))
    assert spec_edit.set_master_count(one, 3).added == ["master-2", "master-3"]
    assert spec.load(one).spec.nodes == spec.load(ha).spec.nodes


@pytest.mark.parametrize(
    ("count", "said"),
    [(2, "odd number of members: 1 or 3 or 5"), (7, "odd number"), (0, "odd number")],
)
def test_an_unsupported_master_count_is_refused_before_the_file_changes(spec_file: Path, count: int, said: str) -> None:
    before = spec_file.read_text()
    with pytest.raises(SpecError) as info:
        spec_edit.set_master_count(spec_file, count)
    assert info.value.problems[0].startswith(f"--masters: {count} ")
    assert said in info.value.problems[0]
    assert spec_file.read_text() == before


def test_the_control_plane_is_not_shrunk_by_scale(spec_file: Path) -> None:
    spec_edit.set_master_count(spec_file, 3)
    before = spec_file.read_text()
    with pytest.raises(SpecError) as info:
        spec_edit.set_master_count(spec_file, 1)
    assert "replace-master" in info.value.problems[0]
    assert spec_file.read_text() == before
    assert spec_edit.set_master_count(spec_file, 3).empty


def test_growing_a_cluster_never_brought_up_is_refused_and_the_spec_kept(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_STATE", str(tmp_path / "state"))
    before = spec_file.read_text()
    with pytest.raises(MachineError) as info:
        scaling.scale(spec_file, None, EventBus(), masters=3)
    assert "has not been brought up yet" in info.value.message()
    assert spec_file.read_text() == before
