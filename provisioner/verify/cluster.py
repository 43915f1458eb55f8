"""Cluster checks that the cluster works: nodes, system pods, DNS, Services, desired state in etcd, scaling, drift."""

from __future__ import annotations

import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from provisioner import drift as drift_mod
from provisioner import layout
from provisioner.verify.kube import CheckFailed, NotYet, http_get, wait_for
from provisioner.verify.lab import (
    ClusterCheck,
    Lab,
    agnhost_deployment,
    client_pod,
    deploy,
    describe_pods,
    dial,
    is_ready,
    node_ready,
    scratch_namespace,
    service,
    wait_no_pods,
    wait_ready_pods,
)

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
            ready, condition = node_ready(node)
            if not ready:
                problems.append(f"{name} not Ready ({condition.get('reason', '') if condition else 'no condition'})")
            got = node["status"]["nodeInfo"]["kubeletVersion"]
            if got != version:
                problems.append(f"{name} runs kubelet {got}, not {version}")
        for master in lab.cluster.masters:
            if master.name in nodes:
                problems.append(f"{master.name} is registered as a node but a master runs no kubelet")
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
    return lab.ssh.run(lab.master.name, f"{layout.ETCDCTL} get {flag} {key}", timeout=60).stdout


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


GROUP: list[ClusterCheck] = [
    ClusterCheck(
        "nodes-ready", "every worker is a Ready node at the spec's version; no master is a node", check_nodes_ready
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
]
