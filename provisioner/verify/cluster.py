"""Cluster checks: the seed's promises tested through the API from the admin machine.

Each check creates what it needs in a namespace of its own, proves one promise, and deletes the
namespace again. Every wait is bounded and, when it gives up, says what it waited for and what it saw.
Timeouts are generous because the lab may run under software emulation (see LAB-NOTES.md).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provisioner import drift as drift_mod
from provisioner import layout
from provisioner.kube import Kubectl, KubectlError
from provisioner.providers.base import Provider
from provisioner.spec import Cluster, Node, VagrantProvider
from provisioner.verify.kube import CheckFailed, NotYet, Ssh, http_get, wait_for

PKI = layout.DIRS.pki
ETCDCTL = f"ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:{layout.PORTS['etcd_client']} {layout.ETCDCTL_TLS}"
CRICTL = f"crictl --runtime-endpoint=unix://{layout.CONTAINERD_SOCKET}"
HTTP_PORT = 8080
# Long enough for a pod to start on an emulated worker (image already imported, no pull).
POD_READY_TIMEOUT = 300.0


@dataclass
class Lab:
    """Everything a check needs to reach the cluster."""

    cluster: Cluster
    kubectl: Kubectl
    ssh: Ssh
    prefix: Sequence[str]
    agnhost_image: str
    provider: Provider | None = None
    progress: Callable[[str], None] = lambda message: None
    cleanup_problems: list[str] = field(default_factory=list)
    # Scratch namespaces whose deletion was asked for; the "cleanup" row waits for them all at the end.
    deleting: list[str] = field(default_factory=list)

    @property
    def master(self) -> Node:
        return self.cluster.masters[0]

    @property
    def workers(self) -> list[Node]:
        return self.cluster.workers


@dataclass(frozen=True)
class ClusterCheck:
    id: str
    expectation: str
    run: Callable[[Lab], str]  # returns a detail worth reporting; raises CheckFailed when the promise is broken


# --- workloads ----------------------------------------------------------------------------------------


def agnhost_deployment(
    name: str,
    image: str,
    replicas: int = 1,
    args: Sequence[str] = ("netexec", f"--http-port={HTTP_PORT}"),
    spread: bool = False,
    toleration_seconds: int | None = None,
) -> dict[str, Any]:
    """A Deployment of agnhost pods labelled app=NAME; the image is pre-imported, never pulled."""
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "agnhost",
                "image": image,
                "imagePullPolicy": "Never",
                "args": list(args),
                "ports": [{"containerPort": HTTP_PORT, "name": "http"}],
            }
        ],
    }
    if spread:
        # A preference, not a rule: the check observes where the scheduler puts pods.
        pod_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app": name}},
            }
        ]
    if toleration_seconds is not None:
        # Evict from an unreachable node after seconds, not the default five minutes.
        pod_spec["tolerations"] = [
            {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": toleration_seconds}
            for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def service(name: str, kind: str = "ClusterIP") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": kind, "selector": {"app": name}, "ports": [{"port": 80, "targetPort": HTTP_PORT}]},
    }


@contextlib.contextmanager
def scratch_namespace(lab: Lab, check: str) -> Iterator[str]:
    """A fresh namespace for one check, deleted afterwards.

    The deletion is asked for at once but not waited on here: on emulated nodes tearing down a namespace's
    pods can take minutes, which would be charged to the check. The "cleanup" row at the end of verify
    waits for every namespace asked for (problems are reported there, not hidden).
    """
    ns = f"verify-{check}-{secrets.token_hex(3)}"
    lab.kubectl.run("create", "namespace", ns)
    try:
        yield ns
    finally:
        proc = lab.kubectl.run("delete", "namespace", ns, "--wait=false", check=False)
        if proc.returncode != 0:
            lab.cleanup_problems.append(f"namespace {ns} not deleted: {proc.stderr.strip()}")
        else:
            lab.deleting.append(ns)


CLEANUP_TIMEOUT = 600.0
# How long a restarted apiserver may take to be ready again: the same bound `up` gives it to start
# (control_plane_start_timeout). On an emulated master its post-start hooks alone took 119 s to 240+ s.
RESTART_READY_TIMEOUT = 420.0


def check_cleanup(lab: Lab) -> str:
    """Wait until every scratch namespace the checks deleted so far is gone; they are not waited on again."""
    asked, lab.deleting = list(lab.deleting), []
    started = time.monotonic()

    def probe() -> str:
        items = lab.kubectl.json("get", "namespaces")["items"]
        left = sorted({i["metadata"]["name"] for i in items} & set(asked))
        if left:
            raise NotYet(f"still there: {', '.join(left)}")
        return f"{len(asked)} scratch namespace(s) gone {time.monotonic() - started:.0f}s after the last check"

    return wait_for("the checks' scratch namespaces to be deleted", probe, CLEANUP_TIMEOUT, interval=5)


CLEANUP = ClusterCheck("cleanup", "every scratch namespace the checks made is deleted again", check_cleanup)


def pods(lab: Lab, ns: str, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lab.kubectl.json("get", "pods", "-n", ns, "-l", f"app={app}")["items"]
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def describe_pods(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no pods"
    parts = []
    for p in items:
        status = p.get("status", {})
        waiting = [
            cs["state"]["waiting"].get("reason", "")
            for cs in status.get("containerStatuses") or []
            if "waiting" in cs.get("state", {})
        ]
        state = "Ready" if is_ready(p) else (",".join(waiting) or status.get("phase", "?"))
        parts.append(f"{p['metadata']['name']} {state} on {p['spec'].get('nodeName') or '-'}")
    return "; ".join(parts)


def wait_ready_pods(
    lab: Lab, ns: str, app: str, count: int, timeout: float = POD_READY_TIMEOUT
) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]]:
        items = [p for p in pods(lab, ns, app) if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in items if is_ready(p)]
        if len(ready) != count or len(items) != count:
            raise NotYet(f"{len(ready)}/{count} ready: {describe_pods(items)}")
        return ready

    return wait_for(f"{count} ready pod(s) of {app} in {ns}", probe, timeout)


def wait_no_pods(lab: Lab, ns: str, app: str, timeout: float = 180) -> None:
    def probe() -> None:
        items = pods(lab, ns, app)
        if items:
            raise NotYet(f"{len(items)} left: {describe_pods(items)}")

    wait_for(f"no pod of {app} left in {ns}", probe, timeout)


def deploy(lab: Lab, ns: str, docs: Sequence[dict[str, Any]]) -> None:
    lab.kubectl.apply(docs, namespace=ns)


def dial(lab: Lab, ns: str, pod: str, host: str, port: int, tries: int) -> dict[str, list[str]]:
    """Ask an agnhost netexec pod to make `tries` HTTP requests for /hostname to host:port (from inside the pod).

    The request reaches the pod through the apiserver's pod proxy (the master routes to every pod
    subnet), so the admin side needs no route to pod addresses and no long-running port-forward.
    """
    query = urllib.parse.urlencode(
        {"request": "hostname", "protocol": "http", "host": host, "port": port, "tries": tries}
    )
    path = f"/api/v1/namespaces/{ns}/pods/{pod}:{HTTP_PORT}/proxy/dial?{query}"
    timeout = 30 + 5 * tries
    proc = lab.kubectl.run("get", "--raw", path, f"--request-timeout={timeout}s", check=False, timeout=timeout + 30)
    if proc.returncode != 0:
        raise NotYet(f"GET {path}: {(proc.stderr or proc.stdout).strip()[:300]}")
    result: dict[str, list[str]] = json.loads(proc.stdout)
    return result


def client_pod(lab: Lab, ns: str) -> dict[str, Any]:
    deploy(lab, ns, [agnhost_deployment("client", lab.agnhost_image)])
    return wait_ready_pods(lab, ns, "client", 1)[0]


# --- checks: the cluster is whole ----------------------------------------------------------------------


def check_nodes_ready(lab: Lab) -> str:
    version = lab.cluster.spec.kubernetes.version
    wanted = sorted(n.name for n in lab.workers)

    def probe() -> str:
        nodes = {n["metadata"]["name"]: n for n in lab.kubectl.json("get", "nodes")["items"]}
        problems = []
        for name in wanted:
            node = nodes.get(name)
            if node is None:
                problems.append(f"{name} not registered")
                continue
            ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
            if not ready or ready[0]["status"] != "True":
                problems.append(f"{name} not Ready ({ready[0].get('reason', '') if ready else 'no condition'})")
            got = node["status"]["nodeInfo"]["kubeletVersion"]
            if got != version:
                problems.append(f"{name} runs kubelet {got}, not {version}")
        if lab.master.name in nodes:
            problems.append(f"{lab.master.name} is registered as a node but the master runs no kubelet")
        if problems:
            raise NotYet("; ".join(problems))
        return f"{', '.join(wanted)} Ready at {version}"

    return wait_for(f"workers {', '.join(wanted)} Ready at {version}", probe, 300)


def check_system_pods(lab: Lab) -> str:
    def probe() -> str:
        items = lab.kubectl.json("get", "pods", "-n", "kube-system")["items"]
        if not any(p["metadata"].get("labels", {}).get("k8s-app") == "kube-dns" for p in items):
            raise NotYet(f"no CoreDNS pod (k8s-app=kube-dns) among {describe_pods(items)}")
        bad = [p for p in items if not is_ready(p) and p.get("status", {}).get("phase") != "Succeeded"]
        if bad:
            raise NotYet(describe_pods(bad))
        return f"{len(items)} pod(s) ready: " + ", ".join(sorted(p["metadata"]["name"] for p in items))

    return wait_for("every kube-system pod Ready", probe, 300)


def check_dns(lab: Lab) -> str:
    with scratch_namespace(lab, "dns") as ns:
        deploy(lab, ns, [agnhost_deployment("web", lab.agnhost_image), service("web")])
        web = wait_ready_pods(lab, ns, "web", 1)[0]["metadata"]["name"]
        client = client_pod(lab, ns)["metadata"]["name"]
        fqdn = f"web.{ns}.svc.{layout.CLUSTER_DOMAIN}"

        def probe() -> str:
            answer = dial(lab, ns, client, fqdn, 80, 1)
            if answer.get("responses") != [web]:
                raise NotYet(f"dial {fqdn}: {answer}")
            return f"{fqdn} resolved from pod {client}; answered by {web}"

        return wait_for(f"pod {client} to resolve and reach {fqdn}", probe, 120, interval=5)


def check_load_balancing(lab: Lab) -> str:
    replicas, tries = 3, 30
    with scratch_namespace(lab, "lb") as ns:
        deploy(lab, ns, [agnhost_deployment("lb", lab.agnhost_image, replicas, spread=True), service("lb")])
        backends = sorted(p["metadata"]["name"] for p in wait_ready_pods(lab, ns, "lb", replicas))
        cluster_ip = lab.kubectl.json("get", "service", "lb", "-n", ns)["spec"]["clusterIP"]
        client = client_pod(lab, ns)["metadata"]["name"]
        # The Service's endpoints may trail pod readiness by a moment: wait for a first answer.
        wait_for(f"Service lb ({cluster_ip}) to answer", lambda: _answers(lab, ns, client, cluster_ip), 120, interval=5)
        answer = dial(lab, ns, client, cluster_ip, 80, tries)
        spread = Counter(answer.get("responses", []))
        text = ", ".join(f"{b}: {spread.get(b, 0)}" for b in backends) + f" of {tries} requests"
        if answer.get("errors"):
            text += f"; {len(answer['errors'])} error(s): {answer['errors'][0]}"
        silent = [b for b in backends if not spread.get(b)]
        if silent or answer.get("errors"):
            raise CheckFailed(f"not every backend answered ({', '.join(silent) or 'errors'}): {text}")
        return text


def _answers(lab: Lab, ns: str, pod: str, host: str) -> None:
    answer = dial(lab, ns, pod, host, 80, 1)
    if not answer.get("responses"):
        raise NotYet(str(answer))


def check_nodeport(lab: Lab) -> str:
    with scratch_namespace(lab, "nodeport") as ns:
        deploy(lab, ns, [agnhost_deployment("np", lab.agnhost_image, 2, spread=True), service("np", "NodePort")])
        wait_ready_pods(lab, ns, "np", 2)
        port = lab.kubectl.json("get", "service", "np", "-n", ns)["spec"]["ports"][0]["nodePort"]
        answers = []
        for worker in lab.workers:
            url = f"http://{worker.address}:{port}/hostname"

            def probe(url: str = url) -> str:
                return http_get(lab.prefix, url).strip()

            answers.append(f"{worker.name}:{port} -> {wait_for(f'NodePort answer from {url}', probe, 120, 5)}")
        return "; ".join(answers)


# --- checks: desired state lives in etcd ---------------------------------------------------------------


def etcd_get(lab: Lab, key: str, keys_only: bool = False) -> bytes:
    flag = "--keys-only" if keys_only else "--print-value-only"
    return lab.ssh.run(lab.master.name, f"{ETCDCTL} get {flag} {key}", timeout=60).stdout


def check_etcd_desired_state(lab: Lab) -> str:
    with scratch_namespace(lab, "etcd") as ns:
        doc = agnhost_deployment("desired", lab.agnhost_image)
        doc["metadata"]["namespace"] = ns
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "desired.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            lab.kubectl.run("apply", "-f", str(path))
        key = f"/registry/deployments/{ns}/desired"

        def probe() -> str:
            found = etcd_get(lab, key, keys_only=True).decode(errors="replace").split()
            if key not in found:
                raise NotYet(f"etcdctl get --keys-only {key} returned {found or 'nothing'}")
            return key

        found = wait_for(f"key {key} in etcd", probe, 60)
        return f"{found} present in etcd on {lab.master.name}"


def check_secret_encrypted(lab: Lab) -> str:
    with scratch_namespace(lab, "secret") as ns:
        plain = f"verify-plaintext-{secrets.token_hex(8)}"
        lab.kubectl.apply(
            [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe"}, "stringData": {"value": plain}}],
            namespace=ns,
        )
        key = f"/registry/secrets/{ns}/probe"
        return judge_stored_secret(key, etcd_get(lab, key), plain)


def judge_stored_secret(key: str, raw: bytes, plain: str) -> str:
    """What etcd holds for a Secret must be a secretbox envelope (k8s:enc:secretbox:...) hiding the value."""
    if not raw:
        raise CheckFailed(f"{key} not found in etcd")
    if plain.encode() in raw:
        raise CheckFailed(f"the Secret's value {plain!r} is stored in plain text under {key}")
    if not raw.startswith(b"k8s:enc:"):
        raise CheckFailed(f"{key} is not encrypted: it starts with {raw[:20]!r}, not k8s:enc:")
    if not raw.startswith(b"k8s:enc:secretbox:"):
        raise CheckFailed(f"{key} is encrypted with {raw[8:30]!r}, not secretbox (k8s:enc:secretbox:)")
    envelope = ":".join(raw.decode(errors="replace").split(":")[:4])
    return f"{key} stored as {envelope}:…, value not in plain text"


# --- checks: scaling and drift --------------------------------------------------------------------------


def check_scaling(lab: Lab) -> str:
    with scratch_namespace(lab, "scale") as ns:
        deploy(lab, ns, [agnhost_deployment("scale", lab.agnhost_image, 1, spread=True)])
        steps: list[str] = []
        spread = ""
        for replicas in (1, 6, 0):
            started = time.monotonic()
            lab.kubectl.run("scale", "deployment/scale", "-n", ns, f"--replicas={replicas}")
            if replicas:
                ready = wait_ready_pods(lab, ns, "scale", replicas)
            else:
                wait_no_pods(lab, ns, "scale")
                ready = []
            _wait_observed(lab, ns, "scale", replicas)
            steps.append(f"{replicas} in {time.monotonic() - started:.0f}s")
            if replicas == 6:
                where = Counter(p["spec"]["nodeName"] for p in ready)
                spread = ", ".join(f"{n} {c}" for n, c in sorted(where.items()))
                missing = [w.name for w in lab.workers if w.name not in where]
                if missing:
                    raise CheckFailed(f"6 replicas all avoided {', '.join(missing)} ({spread})")
        return f"replicas {' -> '.join(steps)}; 6 spread as {spread}"


def _wait_observed(lab: Lab, ns: str, name: str, replicas: int) -> None:
    def probe() -> None:
        d = lab.kubectl.json("get", "deployment", name, "-n", ns)
        status = d.get("status", {})
        seen = (status.get("observedGeneration"), status.get("replicas", 0), status.get("readyReplicas", 0))
        if seen != (d["metadata"]["generation"], replicas, replicas):
            raise NotYet(f"observedGeneration/replicas/ready = {seen}")

    wait_for(f"deployment {name} to report {replicas} ready replica(s)", probe, 120)


def check_drift(lab: Lab) -> str:
    with scratch_namespace(lab, "drift") as ns, tempfile.TemporaryDirectory() as tmp:
        doc = agnhost_deployment("drifty", lab.agnhost_image, 1)
        doc["metadata"]["namespace"] = ns
        manifests = Path(tmp)
        (manifests / "drifty.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        lab.kubectl.run("apply", "-f", str(manifests))
        before = drift_mod.drift(manifests, lab.kubectl)
        if before:
            raise CheckFailed("differences right after apply: " + "; ".join(d.line() for d in before))
        lab.kubectl.run("scale", "deployment/drifty", "-n", ns, "--replicas=2")
        after = drift_mod.drift(manifests, lab.kubectl)
        if not any(d.path == "spec.replicas" for d in after):
            raise CheckFailed(
                "`kubectl scale --replicas=2` was not reported; drift found: "
                + ("; ".join(d.line() for d in after) or "nothing")
            )
        return "none after apply; after kubectl scale: " + "; ".join(d.line() for d in after)


# --- checks: self-healing -------------------------------------------------------------------------------


def check_pod_replaced(lab: Lab) -> str:
    with scratch_namespace(lab, "heal-pod") as ns:
        deploy(lab, ns, [agnhost_deployment("heal", lab.agnhost_image)])
        old = wait_ready_pods(lab, ns, "heal", 1)[0]["metadata"]["name"]
        started = time.monotonic()
        lab.kubectl.run("delete", "pod", old, "-n", ns, "--wait=false")

        def probe() -> str:
            ready = [p["metadata"]["name"] for p in pods(lab, ns, "heal") if is_ready(p)]
            fresh = [str(n) for n in ready if n != old]
            if not fresh:
                raise NotYet(describe_pods(pods(lab, ns, "heal")))
            return fresh[0]

        new = wait_for(f"a Ready replacement for deleted pod {old}", probe, POD_READY_TIMEOUT)
        return f"{old} deleted, {new} Ready after {time.monotonic() - started:.0f}s"


def check_container_restarted(lab: Lab) -> str:
    with scratch_namespace(lab, "heal-ctr") as ns:
        deploy(lab, ns, [agnhost_deployment("crash", lab.agnhost_image)])
        pod = wait_ready_pods(lab, ns, "crash", 1)[0]
        name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
        status = pod["status"]["containerStatuses"][0]
        container_id = status["containerID"].split("://", 1)[-1]
        restarts = status.get("restartCount", 0)
        started = time.monotonic()
        # crictl stop with no grace period: the container is killed (SIGKILL), the pod is not touched.
        lab.ssh.run(node, f"{CRICTL} stop --timeout 0 {container_id}", timeout=90)

        def probe() -> int:
            p = lab.kubectl.json("get", "pod", name, "-n", ns)
            cs = p["status"]["containerStatuses"][0]
            if cs.get("restartCount", 0) <= restarts or not is_ready(p):
                raise NotYet(f"restartCount {cs.get('restartCount', 0)}, ready {is_ready(p)}")
            return int(cs["restartCount"])

        count = wait_for(f"container of {name} restarted by the kubelet on {node}", probe, 180)
        took = time.monotonic() - started
        return f"container {container_id[:12]} of {name} on {node} killed; restarted (count {count}) in {took:.0f}s"


# The daemons kill -9 is tried on: every unit of the layout that runs a binary (a fast test holds this to the
# layout), in this order: the apiserver and its consumers first, etcd under them last; on a worker the
# kubelet before the runtime it depends on.
MASTER_DAEMONS = ["kube-apiserver", "kube-scheduler", "kube-controller-manager", "etcd"]
WORKER_DAEMONS = ["kubelet", "containerd", "kube-proxy"]


def _main_pid(lab: Lab, node: str, unit: str) -> int:
    return int(lab.ssh.text(node, f"systemctl show --property=MainPID --value {unit}") or 0)


def kill_check(unit: str) -> Callable[[Lab], str]:
    def run(lab: Lab) -> str:
        node = lab.master.name if unit in MASTER_DAEMONS else lab.workers[0].name
        old = _main_pid(lab, node, unit)
        if old <= 0:
            raise CheckFailed(f"{unit} on {node} is not running (MainPID 0) before the kill")
        started = time.monotonic()
        lab.ssh.run(node, f"kill -9 {old}")

        def back() -> int:
            active = lab.ssh.run(node, f"systemctl is-active {unit}", check=False).stdout.decode().strip()
            pid = _main_pid(lab, node, unit)
            if active != "active" or pid in (0, old):
                raise NotYet(f"{unit} is {active}, MainPID {pid}")
            return pid

        new = wait_for(f"systemd to restart {unit} on {node} after kill -9", back, 180)
        restarted = time.monotonic() - started
        _wait_cluster_answers(lab, unit, node)
        answered = time.monotonic() - started
        return f"pid {old} killed on {node}; pid {new} after {restarted:.0f}s; cluster answered after {answered:.0f}s"

    return run


def _wait_cluster_answers(lab: Lab, unit: str, node: str) -> None:
    def readyz() -> None:
        proc = lab.kubectl.run("get", "--raw=/readyz", "--request-timeout=20s", check=False, timeout=30)
        if proc.returncode != 0 or proc.stdout.strip() != "ok":
            raise NotYet(f"/readyz: {_failing_checks(proc.stdout + proc.stderr)}")

    wait_for("the apiserver's /readyz to answer ok", readyz, RESTART_READY_TIMEOUT, interval=3)
    if unit in WORKER_DAEMONS:

        def node_ready() -> None:
            n = lab.kubectl.json("get", "node", node)
            ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
            if not ready or ready[0]["status"] != "True":
                raise NotYet(f"{node} Ready={ready[0]['status'] if ready else '?'}")

        wait_for(f"node {node} Ready", node_ready, 240, interval=3)
    if unit in ("kube-scheduler", "kube-controller-manager"):
        port = layout.PORTS[layout.unit(unit).ports[0]]
        script = (
            "import ssl,urllib.request;print(urllib.request.urlopen("
            f"'https://127.0.0.1:{port}/healthz',context=ssl._create_unverified_context(),timeout=10).read().decode())"
        )

        def healthz() -> None:
            out = lab.ssh.run(node, f'python3 -c "{script}"', check=False).stdout.decode().strip()
            if out != "ok":
                raise NotYet(f"{unit} /healthz: {out or 'no answer'}")

        wait_for(f"{unit} /healthz on {node}", healthz, 180, interval=3)


def _failing_checks(text: str) -> str:
    """The [-] lines of a /readyz answer (which check is not ready), else the answer's first line."""
    failing = re.findall(r"\[-\]([^\\\n]+)", text)
    return ", ".join(f.strip() for f in failing) if failing else (text.strip().splitlines() or ["no answer"])[0][:200]


def check_worker_shutdown(lab: Lab) -> str:
    if lab.provider is None or not isinstance(lab.cluster.spec.provider, VagrantProvider):
        raise Skip("static hosts cannot be powered on again by provisioner; shut one down by hand to test this")
    if len(lab.workers) < 2:
        raise Skip("needs two workers to reschedule onto")
    victim, survivor = lab.workers[-1], lab.workers[0]
    with scratch_namespace(lab, "resched") as ns:
        deploy(lab, ns, [agnhost_deployment("resched", lab.agnhost_image, 2, spread=True, toleration_seconds=10)])
        placed = Counter(p["spec"]["nodeName"] for p in wait_ready_pods(lab, ns, "resched", 2))
        started = time.monotonic()
        lab.progress(f"powering off {victim.name}")
        # --no-block: systemctl returns before the machine (and this SSH session) goes away.
        lab.ssh.run(victim.name, "systemctl --no-block poweroff", timeout=30)
        lab.ssh.close(victim.name)
        try:

            def not_ready() -> None:
                n = lab.kubectl.json("get", "node", victim.name)
                ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
                if ready and ready[0]["status"] == "True":
                    raise NotYet(f"{victim.name} still Ready")

            wait_for(f"node {victim.name} to turn NotReady", not_ready, 300, interval=5)
            t_notready = time.monotonic() - started

            def rescheduled() -> None:
                items = [p for p in pods(lab, ns, "resched") if is_ready(p)]
                on_survivor = [p for p in items if p["spec"]["nodeName"] == survivor.name]
                if len(on_survivor) < 2:
                    raise NotYet(describe_pods(pods(lab, ns, "resched")))

            wait_for(f"both pods Ready on {survivor.name}", rescheduled, 420, interval=5)
            t_moved = time.monotonic() - started
        finally:
            lab.progress(f"starting {victim.name} again")
            lab.provider.create([victim])

            def ready_again() -> None:
                n = lab.kubectl.json("get", "node", victim.name)
                ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
                if not ready or ready[0]["status"] != "True":
                    raise NotYet(f"{victim.name} not Ready yet")

            wait_for(f"node {victim.name} Ready again after restart", ready_again, 600, interval=5)
        t_back = time.monotonic() - started
        before = ", ".join(f"{n} {c}" for n, c in sorted(placed.items()))
        return (
            f"pods on {before}; {victim.name} NotReady after {t_notready:.0f}s, both pods on {survivor.name} "
            f"after {t_moved:.0f}s, {victim.name} Ready again after {t_back:.0f}s"
        )


class Skip(Exception):
    """The check cannot run on this cluster (the reason is reported as a skipped row)."""


CHECKS: list[ClusterCheck] = [
    ClusterCheck(
        "nodes-ready", "every worker is a Ready node at the spec's version; the master is no node", check_nodes_ready
    ),
    ClusterCheck("system-pods", "every kube-system pod (CoreDNS included) is Ready", check_system_pods),
    ClusterCheck("dns", "a pod resolves a Service name (web.NS.svc.cluster.local) and reaches it", check_dns),
    ClusterCheck(
        "load-balancing",
        "a ClusterIP Service answers from every one of its 3 agnhost pods over 30 requests",
        check_load_balancing,
    ),
    ClusterCheck("nodeport", "a NodePort Service answers on each worker's address", check_nodeport),
    ClusterCheck(
        "etcd-desired-state",
        "a Deployment applied from a YAML file is under /registry/deployments/NS/NAME in etcd",
        check_etcd_desired_state,
    ),
    ClusterCheck(
        "etcd-secret-encrypted",
        "a Secret is stored in etcd encrypted with secretbox (k8s:enc:secretbox:...), its value not in plain text",
        check_secret_encrypted,
    ),
    ClusterCheck(
        "scaling",
        "replicas 1 -> 6 -> 0 reached and observed; the 6 spread over both workers; 0 leaves no pod",
        check_scaling,
    ),
    ClusterCheck(
        "drift",
        "`provisioner drift` reports nothing after apply and reports spec.replicas after kubectl scale",
        check_drift,
    ),
    ClusterCheck("pod-replaced", "a deleted pod of a Deployment is replaced by a new Ready pod", check_pod_replaced),
    ClusterCheck(
        "container-restarted",
        "a container killed on its worker with crictl is restarted by the kubelet",
        check_container_restarted,
    ),
    *[
        ClusterCheck(
            f"kill-{unit}", f"kill -9 of {unit}: systemd restarts it and the cluster answers again", kill_check(unit)
        )
        for unit in MASTER_DAEMONS + WORKER_DAEMONS
    ],
    ClusterCheck(
        "worker-shutdown",
        "a worker shut down turns NotReady, its pods (10 s tolerations) move to the other worker, and it comes back",
        check_worker_shutdown,
    ),
]

__all__ = ["CHECKS", "CLEANUP", "CheckFailed", "ClusterCheck", "KubectlError", "Lab", "Skip"]
