"""`provisioner plan` without a machine: nodes with none are provisioned from nothing, the PKI a run would
complete is completed in a copy (what it issues is named, the state's is untouched), the versions of replaced
binaries come from the cached artifact sets' manifests, and the exit status says whether anything would change.
What check mode reports task by task is tested where the roles run (test_runner, test_node_files,
test_certs_role) and on the lab (tests/lab/test_plan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pytest import MonkeyPatch
from typer.testing import CliRunner

from provisioner import layout, pki, spec
from provisioner import plan as plan_mod
from provisioner.artifacts import ArtifactSet, artifact_set
from provisioner.artifacts import manifest as manifest_mod
from provisioner.cli import app
from provisioner.cli import plan as plan_cli
from provisioner.events import EventBus
from provisioner.providers.vagrant import generate_ssh_key
from provisioner.runner import FileDiff, TaskChange
from provisioner.state import State
from provisioner.versions import SUPPORTED

OLD, NEW = sorted(SUPPORTED)[:2]


def _spec_file(tmp_path: Path, workers: int = 2) -> Path:
    generate_ssh_key(tmp_path / "id")
    nodes = [{"name": "m", "role": "master", "address": "10.0.0.2"}]
    nodes += [{"name": f"w{i}", "role": "worker", "address": f"10.0.0.{2 + i}"} for i in range(1, workers + 1)]
    data = {
        "apiVersion": "provisioner.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "metal"},
        "spec": {
            "kubernetes": {"version": NEW},
            "provider": {"type": "static"},
            "network": {"nodeSubnet": "10.0.0.0/24", "podSubnet": "10.244.0.0/16"},
            "nodes": [{**n, "ssh": {"key": "id"}} for n in nodes],
        },
    }
    path = tmp_path / f"cluster-{workers}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: MonkeyPatch) -> Path:
    """The artifact cache and state roots under tmp_path; `ensure` finds the set there (nothing built)."""
    monkeypatch.setenv("PROVISIONER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROVISIONER_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(plan_mod, "ensure_artifacts", lambda cluster, bus, source=None: artifact_set(cluster))
    return tmp_path / "cache"


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_a_cluster_never_brought_up_is_provisioned_from_nothing_and_no_state_is_written(
    tmp_path: Path, cached: Path
) -> None:
    path = _spec_file(tmp_path)
    result = CliRunner().invoke(app, ["plan", "--spec", str(path)])
    assert result.exit_code == 2, result.output
    for name in ("m", "w1", "w2"):
        assert f"{name}: not provisioned by `up` yet; would be provisioned from nothing" in result.output
    assert "admin machine: would issue ca, etcd-ca," in result.output
    assert not (tmp_path / "state").exists()


def test_the_pki_is_completed_in_a_copy_and_only_what_a_new_node_needs_is_named(tmp_path: Path, cached: Path) -> None:
    state = State.for_cluster("metal")
    pki.ensure(spec.load(_spec_file(tmp_path, workers=2)), state)
    before = _tree(state.root)
    grown = spec.load(_spec_file(tmp_path, workers=3))
    result = plan_mod.plan(grown, state, EventBus())
    assert sorted(result.issued) == ["kubelet-server-w3", "kubelet-w3", "kubelet-w3.kubeconfig"]
    assert result.provisioned == ["m", "w1", "w2", "w3"]  # no host list: up never saw a machine
    assert _tree(state.root) == before
    assert sorted(p.name for p in state.root.iterdir()) == ["pki"]  # the scratch copy is gone


def _manifest(cache: Path, version: str, sha: str) -> None:
    entry = manifest_mod.Entry("bin/kubelet", "kubernetes", version, "test", sha, 1)
    manifest_mod.save(
        manifest_mod.Manifest(version, files={entry.path: entry}), cache / "artifacts" / version / "manifest.json"
    )


def test_a_replaced_binary_shows_the_version_installed_and_the_one_it_gets(tmp_path: Path, cached: Path) -> None:
    _manifest(cached, OLD, "a" * 64)
    _manifest(cached, NEW, "b" * 64)
    cluster = spec.load(_spec_file(tmp_path))
    kubelet = f"{layout.DIRS.bin}/kubelet"
    host = plan_mod.HostPlan("w1", "worker", [TaskChange("prep", "w1", "Fetch", items=(kubelet,))])
    aset = ArtifactSet(cached / "artifacts" / NEW, NEW)

    def versions(installed: str | None) -> str:
        [binary] = plan_mod._binaries(cluster, aset, host, {kubelet: installed})
        return binary.versions

    assert versions("a" * 64) == f"{OLD} -> {NEW}"
    assert versions("c" * 64) == f"unknown -> {NEW}"
    assert versions(None) == NEW  # nothing installed


def test_a_unit_the_run_installs_first_is_a_new_service() -> None:
    unit = f"{layout.DIRS.units}/{layout.APISERVER_LB_UNIT}.service"
    change = TaskChange("workers", "w1", "Systemd unit", diffs=(FileDiff(unit, "--- /dev/null\n+++ x\n", new=True),))
    assert plan_mod.HostPlan("w1", "worker", [change]).new_services == [layout.APISERVER_LB_UNIT]


def _plan(changes: list[TaskChange]) -> plan_mod.Plan:
    return plan_mod.Plan("lab", NEW, [plan_mod.HostPlan("w1", "worker", changes)], [], True, [], [], None)


@pytest.mark.parametrize(
    ("changes", "code"),
    [([], 0), ([TaskChange("workers", "w1", "Restart kube-proxy", handler=True)], 2)],
    ids=["nothing", "a restart"],
)
def test_the_exit_status_says_whether_anything_would_change(
    monkeypatch: MonkeyPatch, changes: list[TaskChange], code: int
) -> None:
    monkeypatch.setattr(plan_mod, "plan", lambda *args, **kwargs: _plan(changes))
    result = CliRunner().invoke(app, ["plan"])
    assert result.exit_code == code, result.output
    last = result.output.strip().splitlines()[-1]
    if code == 0:
        assert last == "nothing would change: `up` would report 0 changed tasks on 1 host(s)"
    else:
        assert "would run: Restart kube-proxy" in result.output
        assert last == "summary: 1 of 1 host(s) would change; 1 task(s), 1 of them handlers (restarts)"


def test_a_bad_spec_is_an_error_not_a_change(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: provisioner.dev/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec: {contol_plane: 1}\n"
    )
    result = CliRunner().invoke(app, ["plan", "--spec", str(path)])
    assert result.exit_code == 1
    assert "contol_plane" in result.output


def test_a_change_prints_its_items_and_diff_with_the_file_named() -> None:
    unit = f"{layout.DIRS.units}/kube-proxy.service"
    diff = "--- a (before)\n+++ a (after)\n@@ -1 +1 @@\n-old\n+new\n"
    change = TaskChange(
        "workers", "w1", "Systemd unit", diffs=(FileDiff(unit, diff), FileDiff("/etc/x", "mode: 0644 -> 0600"))
    )
    lines = plan_cli.render(_plan([change]))
    assert lines[2:8] == [
        "  workers: Systemd unit",
        "    --- a (before)",
        "    +++ a (after)",
        "    @@ -1 +1 @@",
        "    -old",
        "    +new",
    ]
    assert lines[8] == "    /etc/x: mode: 0644 -> 0600"


def test_a_version_other_than_the_running_one_names_upgrade() -> None:
    result = _plan([])
    assert not any("refuses a version change" in line for line in plan_cli.render(result))
    result.running_version = "v1.36.3"
    assert result.version_change
    assert plan_cli.render(result)[1] == (
        "the cluster runs v1.36.3: `up` refuses a version change; `provisioner upgrade` makes these changes "
        "node by node, each worker drained first"
    )
