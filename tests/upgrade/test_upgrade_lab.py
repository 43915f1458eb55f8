"""The default lab upgraded in place from v1.36.3 to v1.37.2 while a Service is asked every second from the
admin machine: the first `upgrade` stops on a PodDisruptionBudget that allows no disruption (named, the worker
left cordoned), the second one after its removal finishes; then every node runs v1.37.2, `verify` passes and
`up` again changes nothing.

Durations and figures are printed (./run-tests --upgrade runs pytest with -s).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from provisioner import artifacts, lifecycle, providers, spec, upgrade
from provisioner.cli import app
from provisioner.events import EventBus
from provisioner.kube import Kubectl
from provisioner.lifecycle import UpResult
from provisioner.state import State
from provisioner.verify import run
from provisioner.verify.lab import SERVICE_GAP_LIMIT, agnhost_deployment, service, service_and_api_probes

pytestmark = [pytest.mark.upgrade]

TO = "v1.37.2"
NS = "upgrade-load"
# One master: its apiserver restarts once with the new binary; what the admin machine may go without an answer.
API_OUTAGE_LIMIT = 180.0


def _doc(doc: dict[str, object], namespace: str) -> dict[str, object]:
    meta = dict(doc["metadata"])  # type: ignore[arg-type]
    meta["namespace"] = namespace
    return {**doc, "metadata": meta}


def test_an_upgrade_stopped_by_a_budget_continues_and_the_service_answers_throughout(
    old_lab: tuple[Path, UpResult],
) -> None:
    spec_file, first = old_lab
    cluster = spec.load(spec_file)
    state = State.for_cluster(cluster.name)
    kubectl = Kubectl(artifacts.artifact_set(cluster).bin / "kubectl", state.kubeconfig, first.prefix)
    image = artifacts.image_names(cluster.spec.kubernetes.version)["agnhost"]
    # The load: two pods spread over the workers behind a NodePort. The guarded one: one pod and a budget
    # that allows no disruption, so its worker's drain cannot finish.
    guarded = agnhost_deployment("guarded", image, 1)
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }
    # The load's own budget lets one of its two pods go at a time: a drain waits for the other to be back.
    load_budget = {
        **budget,
        "metadata": {"name": "load"},
        "spec": {**budget["spec"], "selector": {"matchLabels": {"app": "load"}}},
    }  # type: ignore[dict-item]
    docs = [
        agnhost_deployment("load", image, 2, spread=True),
        service("load", "NodePort"),
        load_budget,
        guarded,
        budget,
    ]
    kubectl.run("create", "namespace", NS)
    kubectl.run("apply", "-f", "-", input=yaml.safe_dump_all([_doc(d, NS) for d in docs]))
    for name in ("load", "guarded"):
        kubectl.run("-n", NS, "rollout", "status", f"deployment/{name}", "--timeout=300s", timeout=330)
    port = kubectl.json("-n", NS, "get", "service", "load")["spec"]["ports"][0]["nodePort"]
    workers = cluster.workers

    answering, api = service_and_api_probes(kubectl, first.prefix, [str(w.address) for w in workers], port)
    answering.start()
    api.start()
    time.sleep(5)
    started = time.monotonic()
    try:
        args = ["upgrade", "--to", TO, "--yes", "--drain-timeout", "60", "--spec", str(spec_file)]
        stopped = CliRunner().invoke(app, args)
        first_run = time.monotonic() - started
        print(f"\nfirst upgrade: exit {stopped.exit_code} after {first_run:.0f}s:\n{stopped.output[-1500:]}")
        assert stopped.exit_code != 0
        guarded_node = kubectl.json("-n", NS, "get", "pods", "-l", "app=guarded")["items"][0]["spec"]["nodeName"]
        assert f"node {guarded_node}: the drain stopped" in stopped.output
        assert f"pod {NS}/guarded-" in stopped.output and "PodDisruptionBudget" in stopped.output
        assert kubectl.json("get", "node", guarded_node)["spec"].get("unschedulable") is True  # left cordoned
        kubectl.run("-n", NS, "delete", "pdb", "guarded")
        again = time.monotonic()
        done = CliRunner().invoke(app, ["upgrade", "--yes", "--drain-timeout", "300", "--spec", str(spec_file)])
        second_run = time.monotonic() - again
        print(f"second upgrade: exit {done.exit_code} after {second_run:.0f}s:\n{done.output[-2500:]}")
        assert done.exit_code == 0, done.output
    finally:
        ended = time.monotonic()
        answering.stop()
        api.stop()
    gap = api.longest_gap(started, ended)
    total = len(answering.answered) + len(answering.failures)
    print(
        f"the Service through each worker's NodePort: {len(answering.failures)} failed of {total} "
        f"{answering.failures[:3]}; the API from the admin machine: longest gap {gap:.1f}s"
    )
    assert spec.load(spec_file).spec.kubernetes.version == TO
    upgraded = spec.load(spec_file)
    nodes = upgrade.read_nodes(providers.node_ssh(upgraded, state, EventBus()), upgraded)
    assert all(n.at(TO) for n in nodes), nodes
    kubelets = {
        n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"] for n in kubectl.json("get", "nodes")["items"]
    }
    assert set(kubelets.values()) == {TO}, kubelets
    assert not answering.failures, answering.failures
    served = answering.longest_gap(started, ended)
    assert served <= SERVICE_GAP_LIMIT, (
        f"the Service went {served:.0f}s without an answer ({len(answering.answered)} answered)"
    )
    assert gap <= API_OUTAGE_LIMIT, f"the API did not answer for {gap:.0f}s"
    report = run(upgraded, state, EventBus(), ["hosts", "cluster", "security"])
    for r in report.results:
        print(f"{r.seconds:8.1f}s  {r.result:<7} {r.check}: {r.detail[:160]}")
    assert report.ok, "\n".join(f"{r.check}: {r.detail}" for r in report.failed)
    again_up = lifecycle.up(upgraded, state, EventBus(), merge_kubeconfig=False)
    print(f"up again after the upgrade: {again_up.changed} changed")
    assert again_up.changed == 0, {h: s.changed for h, s in again_up.run.hosts.items()}
