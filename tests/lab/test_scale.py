"""Grow and shrink the lab with `scale`: 2 -> 3 -> 1 -> 2 workers, verify's node checks passing after each step.

Adding runs the node phases only on the new worker (the others are not even in the run, and their pods
keep running untouched); removing drains the workers first, so a Deployment's pods move to the worker
that stays. The spec edited is a copy of the default one (same cluster name, so the same lab); the test
ends with the default shape, and the conftest runs it after the verify suite and before reset.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from labcluster import LabCluster

from provisioner import artifacts, paths, scaling, spec, verify
from provisioner.events import EventBus
from provisioner.kube import Kubectl
from provisioner.providers import for_cluster
from provisioner.state import State
from provisioner.verify.kube import Ssh
from provisioner.verify.lab import Lab, agnhost_deployment, pods, wait_ready_pods

pytestmark = [pytest.mark.lab, pytest.mark.cluster, pytest.mark.verify]

# What must hold after every step: each node's services, every worker Ready, system pods, Service DNS.
AFTER_EACH_STEP = ["hosts", "nodes-ready", "system-pods", "dns"]
NAMESPACE = "scale-test"


def _verify(spec_file: Path, step: str) -> None:
    cluster = spec.load(spec_file)
    started = time.monotonic()
    report = verify.run(cluster, State.for_cluster(cluster.name), EventBus(), select=AFTER_EACH_STEP)
    print(f"verify after {step}: {len(report.results)} rows in {time.monotonic() - started:.0f}s")
    assert report.ok, f"after {step}: " + "; ".join(f"{r.check}: {r.detail}" for r in report.failed)
    # The host checks ran on exactly the workers the spec now has: none on a removed one, none skipped.
    hosts = {r.check.rsplit("@", 1)[1] for r in report.results if "@" in r.check}
    assert hosts == {"master", *(n.name for n in cluster.workers)}


def _pods(lab: Lab) -> dict[str, tuple[str, int]]:
    """uid -> (node, restarts) of the kept Deployment's pods."""
    return {
        p["metadata"]["uid"]: (p["spec"]["nodeName"], sum(c["restartCount"] for c in p["status"]["containerStatuses"]))
        for p in pods(lab, NAMESPACE, "keep")
    }


def test_scale_to_three_workers_and_back_to_one(lab_cluster: LabCluster, tmp_path: Path) -> None:
    spec_file = tmp_path / "cluster.yaml"
    shutil.copy(paths.default_spec(), spec_file)
    kubectl = Kubectl(
        artifacts.artifact_set(lab_cluster.cluster).bin / "kubectl", lab_cluster.kubeconfig, lab_cluster.prefix
    )
    image = artifacts.image_names(lab_cluster.cluster.spec.kubernetes.version)["agnhost"]
    lab = Lab(lab_cluster.cluster, kubectl, Ssh({}, lab_cluster.prefix, []), lab_cluster.prefix, image)
    kubectl.run("create", "namespace", NAMESPACE)
    try:
        kubectl.apply([agnhost_deployment("keep", image, 2, spread=True)], namespace=NAMESPACE)
        wait_ready_pods(lab, NAMESPACE, "keep", 2)
        before = _pods(lab)

        started = time.monotonic()
        grown = scaling.scale(spec_file, 3, EventBus())
        print(f"scale 2 -> 3: {time.monotonic() - started:.0f}s; changed per host {grown.changed_per_host}")
        assert grown.plan.added == ["worker-3"]
        # Only the new worker ran the node phases: the existing nodes were not part of the run at all,
        # and the pods on them are the same pods, not restarted.
        assert set(grown.changed_per_host) == {"worker-3"}
        assert grown.changed_per_host["worker-3"] > 0
        assert _pods(lab) == before
        three = spec.load(spec_file)
        _verify(spec_file, "scale 2 -> 3")

        started = time.monotonic()
        shrunk = scaling.scale(spec_file, 1, EventBus())
        print(f"scale 3 -> 1: {time.monotonic() - started:.0f}s")
        assert shrunk.plan.removed == ["worker-3", "worker-2"]
        nodes = [n["metadata"]["name"] for n in kubectl.json("get", "nodes")["items"]]
        assert nodes == ["worker-1"]
        machines = {m.name: m.state for m in for_cluster(three, lab_cluster.state, EventBus()).status()}
        assert machines == {
            "master": "running",
            "worker-1": "running",
            "worker-2": "not created",
            "worker-3": "not created",
        }
        # Nothing lost: the drained pods run again on the worker that stayed.
        moved = wait_ready_pods(lab, NAMESPACE, "keep", 2)
        assert {p["spec"]["nodeName"] for p in moved} == {"worker-1"}
        _verify(spec_file, "scale 3 -> 1")
    finally:
        started = time.monotonic()
        scaling.scale(spec_file, 2, EventBus())  # back to the default shape for the reset test after this one
        print(f"scale back to 2: {time.monotonic() - started:.0f}s")
        kubectl.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)
    _verify(spec_file, "scale 1 -> 2")
