"""The cluster itself, on the real lab: nodes Ready at the pinned version, pods reaching pods across
nodes and a Service by its DNS name, and a second `up` that changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from labcluster import LabCluster

from provisioner import admin, forwarder, lifecycle
from provisioner.artifacts import image_names
from provisioner.events import EventBus
from provisioner.lifecycle import UpResult

pytestmark = [pytest.mark.lab, pytest.mark.cluster]

NAMESPACE = "cluster-test"
ANSIBLE_PHASES = ["prep", "pki", "etcd", "control plane", "workers", "addons"]


def test_every_worker_is_ready_at_the_pinned_version_and_the_master_is_no_node(lab_cluster: LabCluster) -> None:
    nodes = json.loads(lab_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(by_name) == {n.name for n in lab_cluster.cluster.workers}
    for name, node in by_name.items():
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", name
        assert node["status"]["nodeInfo"]["kubeletVersion"] == lab_cluster.cluster.spec.kubernetes.version
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == str(lab_cluster.cluster.node(name).address)


def _manifest(agnhost: str) -> str:
    def pod(name: str, node: str) -> str:
        return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {name}}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers:
    - name: agnhost
      image: {agnhost}
      imagePullPolicy: Never
      args: [netexec, --http-port=8080]
---"""

    return (
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n---"
        + pod("client", "worker-1")
        + pod("server", "worker-2")
        + f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  selector: {{app: server}}
  ports: [{{port: 80, targetPort: 8080}}]
"""
    )


def _connect(lab: LabCluster, target: str, within: float = 120) -> str:
    """agnhost connect from the client pod; retried because Service endpoints and DNS settle after Ready."""
    deadline = time.monotonic() + within
    while True:
        done = lab.kubectl(
            "-n", NAMESPACE, "exec", "client", "--", "/agnhost", "connect", target, "--timeout=5s", check=False
        )
        if done.returncode == 0 or time.monotonic() > deadline:
            return f"rc={done.returncode} {done.stdout}{done.stderr}".strip()
        time.sleep(3)


@pytest.fixture(scope="module")
def pods(lab_cluster: LabCluster) -> Iterator[LabCluster]:
    lab = lab_cluster
    agnhost = image_names(lab.cluster.spec.kubernetes.version)["agnhost"]
    lab.kubectl("apply", "-f", "-", input=_manifest(agnhost))
    lab.kubectl("-n", NAMESPACE, "wait", "pod", "--all", "--for=condition=Ready", "--timeout=300s")
    yield lab
    lab.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_a_pod_reaches_a_pod_on_the_other_worker(pods: LabCluster) -> None:
    server = json.loads(pods.kubectl("-n", NAMESPACE, "get", "pod", "server", "-o", "json").stdout)
    client = json.loads(pods.kubectl("-n", NAMESPACE, "get", "pod", "client", "-o", "json").stdout)
    assert server["spec"]["nodeName"] != client["spec"]["nodeName"]
    assert _connect(pods, f"{server['status']['podIP']}:8080") == "rc=0"


def test_a_pod_reaches_a_service_by_its_dns_name(pods: LabCluster) -> None:
    assert _connect(pods, f"web.{NAMESPACE}.svc.cluster.local:80") == "rc=0"


# What the server pod's `agnhost netexec --http-port=8080` logs once it listens (netexec.go's startServer;
# agnhost routes Go's log through klog, so a line reads "I1201 20:02:00.307025  1 log.go:244] Started ...").
SERVER_STARTED = "] Started HTTP server on port 8080"


def test_apiserver_reaches_kubelets_for_logs(pods: LabCluster) -> None:
    """`kubectl logs` is served by the kubelet on worker-2 through the apiserver: it shows the server's own log."""
    logs = pods.kubectl("-n", NAMESPACE, "logs", "server").stdout
    assert any(line.endswith(SERVER_STARTED) for line in logs.splitlines()), logs


def test_first_up_reported_every_phase_with_its_duration(first_up: UpResult) -> None:
    timings = {p.name: p for p in first_up.phases}
    for phase in [*ANSIBLE_PHASES, "admin kubeconfig"]:
        assert phase in timings, sorted(timings)
        assert timings[phase].seconds > 0
    assert first_up.run_dir.is_dir()


def test_up_again_changes_nothing(lab_cluster: LabCluster) -> None:
    """...on the nodes, and on the admin machine: the same forwarder, the same user kubeconfig."""
    lab = lab_cluster
    fwd = forwarder.running(lab.state)
    merged = admin.merged_path(lab.state)
    merged_text = merged.read_text() if merged else None
    again = lifecycle.up(lab.cluster, lab.state, EventBus())
    assert forwarder.running(lab.state) == fwd, "the next up started another forwarder"
    if merged is not None:
        assert merged.read_text() == merged_text, f"the next up rewrote {merged}"
    per_host = {host: stats.changed for host, stats in again.run.hosts.items()}
    assert per_host == dict.fromkeys(per_host, 0), f"changed tasks per host: {per_host}; see {again.run.stdout}"
    assert set(per_host) == {n.name for n in lab.cluster.spec.nodes}
    assert again.changed == 0
