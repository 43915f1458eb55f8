"""`provisioner verify` and `provisioner drift` on the real lab.

The whole verify passes on a healthy cluster; then promises are broken by hand and the tools must
say so: a stopped service is named by verify, a `kubectl scale` is reported by drift.
Durations of every check are printed (run with -s to read them) and kept in the JSON report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labcluster import LabCluster
from typer.testing import CliRunner

from provisioner import artifacts, paths
from provisioner.cli.drift import app as drift_app
from provisioner.drift import drift
from provisioner.events import EventBus, PhaseFinished, Recorder
from provisioner.kube import Kubectl
from provisioner.verify import clusterchecks, ha, run
from provisioner.verify.kube import Ssh, wait_for
from provisioner.verify.lab import agnhost_deployment
from provisioner.verify.report import FAILED, PASSED, SKIPPED

pytestmark = [pytest.mark.lab, pytest.mark.cluster, pytest.mark.verify]


def _kubectl(lab: LabCluster) -> Kubectl:
    return Kubectl(artifacts.artifact_set(lab.cluster).bin / "kubectl", lab.kubeconfig, lab.prefix)


def test_verify_passes_every_check_on_the_default_lab(lab_cluster: LabCluster) -> None:
    events = Recorder()
    bus = EventBus()
    bus.subscribe(events)
    report = run(lab_cluster.cluster, lab_cluster.state, bus)
    for r in report.results:
        print(f"{r.seconds:8.1f}s  {r.result:<7} {r.check}: {r.detail}")
    assert report.ok, "\n".join(f"{r.check}: {r.detail}" for r in report.failed)
    ran = {r.group for r in report.results if r.result == PASSED}
    assert ran >= {"master", "worker", "common", *(c.id for c in clusterchecks.CHECKS if c not in ha.GROUP)}
    # Only the rows that need three masters skip here, and they say so.
    skipped = [r for r in report.results if r.result == SKIPPED]
    assert {r.check for r in skipped} == {c.id for c in ha.GROUP}
    assert all("three masters" in r.detail for r in skipped)
    data = json.loads(Path(report.files[0]).read_text())
    assert data["ok"] and len(data["results"]) == len(report.results)
    assert any(isinstance(e, PhaseFinished) and e.phase == "verify dns" for e in events.events)


@pytest.fixture
def stopped_scheduler(lab_cluster: LabCluster, lab_ssh: Ssh) -> Iterator[str]:
    master = lab_cluster.cluster.masters[0].name
    lab_ssh.run(master, "systemctl stop kube-scheduler")
    yield master
    lab_ssh.run(master, "systemctl start kube-scheduler")

    def active() -> None:
        state = lab_ssh.run(master, "systemctl is-active kube-scheduler", check=False).stdout.decode().strip()
        assert state == "active", state

    wait_for("kube-scheduler active again", active, 120)


def test_verify_names_a_service_stopped_by_hand(lab_cluster: LabCluster, stopped_scheduler: str) -> None:
    started = time.monotonic()
    report = run(lab_cluster.cluster, lab_cluster.state, EventBus(), select=["master"])
    failed = {r.check for r in report.failed}
    print(f"verify --only master with kube-scheduler stopped: {time.monotonic() - started:.1f}s; failed: {failed}")
    assert f"master: service kube-scheduler @{stopped_scheduler}" in failed
    assert f"master: service etcd @{stopped_scheduler}" not in failed
    assert not report.ok


@pytest.fixture
def applied(lab_cluster: LabCluster, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    kubectl = _kubectl(lab_cluster)
    ns = "drift-test"
    image = artifacts.image_names(lab_cluster.cluster.spec.kubernetes.version)["agnhost"]
    doc = agnhost_deployment("web", image, 1)
    doc["metadata"]["namespace"] = ns
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    (tmp_path / "web.yaml").write_text(yaml.safe_dump_all([namespace, doc], sort_keys=False))
    kubectl.run("apply", "-f", str(tmp_path / "web.yaml"))
    yield tmp_path, ns
    kubectl.run("delete", "namespace", ns, "--wait=true", "--timeout=240s", check=False, timeout=300)


def test_drift_reports_a_kubectl_scale(lab_cluster: LabCluster, applied: tuple[Path, str]) -> None:
    manifests, ns = applied
    kubectl = _kubectl(lab_cluster)
    assert drift(manifests, kubectl) == []
    kubectl.run("scale", "deployment/web", "-n", ns, "--replicas=3")
    found = drift(manifests, kubectl)
    assert [(d.object, d.path, d.desired, d.live) for d in found] == [(f"Deployment {ns}/web", "spec.replicas", 1, 3)]

    # The command a user runs: exit 1 and the difference printed.
    spec_file = str(paths.default_spec())
    result = CliRunner().invoke(drift_app, ["--manifests", str(manifests), "--spec", spec_file])
    print(result.output)
    assert result.exit_code == 1, result.output
    assert "spec.replicas: 1 (file) → 3 (live)" in result.output

    kubectl.run("scale", "deployment/web", "-n", ns, "--replicas=1")
    result = CliRunner().invoke(drift_app, ["--manifests", str(manifests), "--spec", spec_file])
    assert result.exit_code == 0, result.output


def test_report_marks_failures_as_failed_rows(lab_cluster: LabCluster, stopped_scheduler: str) -> None:
    """The API-side view of the same break: the scheduler's kill check cannot find a running process."""
    report = run(lab_cluster.cluster, lab_cluster.state, EventBus(), select=["kill-kube-scheduler"])
    assert [(r.check, r.result) for r in report.results] == [("kill-kube-scheduler", FAILED)]
    assert "not running" in report.results[0].detail
