"""Pieces of `up` that need no machine: the hint it prints, preflight, reset's confirmation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pytest import MonkeyPatch
from typer.testing import CliRunner

from provisioner import cli, inventory, lifecycle, paths, preflight, spec
from provisioner.errors import MachineError, ProvisionerError
from provisioner.events import EventBus
from provisioner.hosts import HostConnection
from provisioner.providers.vagrant import generate_ssh_key
from provisioner.state import State


def test_kubectl_hint_names_the_merged_context(tmp_path: Path) -> None:
    access = lifecycle.AdminAccess(tmp_path / "kubeconfig", "https://127.0.0.1:40000", "lab", tmp_path / "c", "")
    result = lifecycle.UpResult(
        tmp_path / "admin.kubeconfig", ["ip", "netns", "exec", "prov-lab"], tmp_path, None, [], access
    )  # type: ignore[arg-type]
    assert result.kubectl_hint() == "kubectl --context lab get nodes"
    opted_out = lifecycle.AdminAccess(tmp_path / "kubeconfig", "https://127.0.0.1:40000", "lab", None, "")
    result.admin = opted_out
    assert result.kubectl_hint() == f"kubectl --kubeconfig {tmp_path / 'kubeconfig'} get nodes"


def test_reset_asks_before_touching_any_node_and_no_stops_it(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    called: list[str] = []
    monkeypatch.setattr(lifecycle, "reset", lambda *args, **kwargs: called.append("reset"))
    result = CliRunner().invoke(cli.app, ["reset", "--spec", str(paths.default_spec())], input="n\n")
    assert result.exit_code == 1
    assert "reset master, worker-1, worker-2" in result.output
    assert called == []


def test_reset_playbook_runs_the_reset_role_on_every_node() -> None:
    plays = yaml.safe_load((paths.REPO_ROOT / "playbooks" / "reset.yml").read_text())
    assert [(p["hosts"], [r["role"] for r in p["roles"]]) for p in plays] == [("k8s_cluster", ["reset"])]
    # What the reset role removes is resolved and held to the layout in test_layout.py.


class _StopAfterPreflight(Exception):
    pass


def _static_cluster(tmp_path: Path) -> spec.Cluster:
    generate_ssh_key(tmp_path / "id")
    nodes = [("m", "master", "10.0.0.2"), ("w1", "worker", "10.0.0.3"), ("w2", "worker", "10.0.0.4")]
    data = {
        "apiVersion": "provisioner.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "metal"},
        "spec": {
            "provider": {"type": "static"},
            "network": {"nodeSubnet": "10.0.0.0/24", "podSubnet": "10.244.0.0/16"},
            "nodes": [{"name": n, "role": r, "address": a, "ssh": {"key": "id"}} for n, r, a in nodes],
        },
    }
    return spec.parse(data, base_dir=tmp_path)


def _up_until_inventory(
    tmp_path: Path, monkeypatch: MonkeyPatch, ready: bool, limit: list[str] | None
) -> list[list[str]]:
    """Run `up` on static hosts up to the step after preflight; the host lists preflight probed, in order."""
    probed: list[list[str]] = []

    def probe(hosts: list[HostConnection], prefix: list[str]) -> list[preflight.Result]:
        probed.append([h.name for h in hosts])
        return [preflight.Result(h.name, f"{h.ssh_host}:{h.ssh_port}", ready, "" if ready else "no") for h in hosts]

    def stop(*args: object) -> None:
        raise _StopAfterPreflight

    monkeypatch.setattr(lifecycle, "ensure_artifacts", lambda *args, **kwargs: SimpleNamespace(root=tmp_path))
    monkeypatch.setattr(preflight, "probe", probe)
    monkeypatch.setattr(inventory, "write", stop)
    with pytest.raises(_StopAfterPreflight if ready else MachineError):
        lifecycle.up(_static_cluster(tmp_path), State(tmp_path / "state"), EventBus(), limit=limit)
    return probed


@pytest.mark.parametrize(("limit", "checked"), [(None, ["m", "w1", "w2"]), (["w2"], ["w2"])], ids=["up", "scale"])
def test_up_checks_static_hosts_once(
    tmp_path: Path, monkeypatch: MonkeyPatch, limit: list[str] | None, checked: list[str]
) -> None:
    """`up` (and `scale`, which is `up` limited to the new nodes) runs preflight once on the hosts it converges."""
    assert _up_until_inventory(tmp_path, monkeypatch, True, limit) == [checked]


def test_up_stops_at_preflight_when_a_static_host_is_not_ready(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    assert _up_until_inventory(tmp_path, monkeypatch, False, None) == [["m", "w1", "w2"]]


def test_up_refuses_a_version_change_before_anything_is_made_and_names_upgrade(
    tmp_path: Path, monkeypatch: MonkeyPatch
) -> None:
    cluster = _static_cluster(tmp_path)
    state = State(tmp_path / "state").ensure()
    state.version_file.write_text("v1.36.3\n")  # what the last `up` converged the cluster to
    built: list[object] = []
    monkeypatch.setattr(lifecycle, "ensure_artifacts", lambda *args, **kwargs: built.append(args))
    with pytest.raises(ProvisionerError) as caught:
        lifecycle.up(cluster, state, EventBus())
    message = str(caught.value)
    assert message.startswith("spec.kubernetes.version: is v1.37.2, but the cluster runs v1.36.3")
    assert "provisioner upgrade" in message and "put v1.36.3 back" in message
    assert not built  # refused before artifacts, machines or certificates


def test_up_with_the_recorded_version_or_no_record_goes_on(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    cluster = _static_cluster(tmp_path)
    state = State(tmp_path / "state").ensure()
    for recorded in (None, cluster.spec.kubernetes.version):
        if recorded:
            state.version_file.write_text(recorded + "\n")
        lifecycle._refuse_version_change(cluster, state)  # no error: the same version, or no record yet
