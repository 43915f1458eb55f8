"""What every cluster check works with: the lab, the workloads it deploys, scratch namespaces and bounded waits.

Each check creates what it needs in a namespace of its own, proves one promise, and deletes the
namespace again. Every wait is bounded and, when it gives up, says what it waited for and what it saw.
Timeouts are generous because the lab may run under software emulation (see LAB-NOTES.md).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner import endpoints
from provisioner.errors import ProvisionerError
from provisioner.kube import Kubectl
from provisioner.providers.base import Provider
from provisioner.spec import Cluster, Node
from provisioner.verify.kube import NotYet, Ssh, http_get, wait_for

HTTP_PORT = 8080
# Long enough for a pod to start on an emulated worker (image already imported, no pull).
POD_READY_TIMEOUT = 300.0
# How long a new NodePort Service may take to answer through a worker (kube-proxy programs it).
SERVICE_READY_TIMEOUT = 120.0
# The longest time a probe once a second may go without an answer through a Service that must stay up: a
# request's own bound (5 s) and the next one's.
SERVICE_GAP_LIMIT = 10.0


@dataclass
class Lab:
    """Everything a check needs to reach the cluster."""

    cluster: Cluster
    kubectl: Kubectl
    ssh: Ssh
    prefix: Sequence[str]
    agnhost_image: str
    provider: Provider | None = None
    # kubectl as the user's own shell runs it (the admin machine's kubeconfig, through its loopback balancer
    # over every master); None when that is the same as `kubectl`.
    admin: Kubectl | None = None
    progress: Callable[[str], None] = lambda message: None
    cleanup_problems: list[str] = field(default_factory=list)
    # Scratch namespaces whose deletion was asked for; the "cleanup" row waits for them all at the end.
    deleting: list[str] = field(default_factory=list)

    @property
    def master(self) -> Node:
        """The master the admin machine talks to (the checks log in there for etcdctl and the audit log)."""
        return endpoints.admin_master(self.cluster)

    @property
    def workers(self) -> list[Node]:
        return self.cluster.workers


@dataclass(frozen=True)
class ClusterCheck:
    id: str
    expectation: str
    run: Callable[[Lab], str]  # returns a detail worth reporting; raises CheckFailed when the promise is broken


class Skip(Exception):
    """The check cannot run on this cluster (the reason is reported as a skipped row)."""


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


def pods(lab: Lab, ns: str, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lab.kubectl.json("get", "pods", "-n", ns, "-l", f"app={app}")["items"]
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def node_ready(node: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Whether a Node is Ready, and its Ready condition ({} while the kubelet has reported none)."""
    conditions = node["status"].get("conditions") or []
    condition: dict[str, Any] = next((c for c in conditions if c["type"] == "Ready"), {})
    return condition.get("status") == "True", condition


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


class EverySecond(threading.Thread):
    """Calls `request(n)` once an interval until stopped, keeping when each was answered (monotonic time) and
    why each failed (whatever it raised): the requests a row or a lab test runs during an outage. A request
    that fails in any way is a failure kept, never the end of the thread: a probe that died at its first
    request would have no failures to show."""

    def __init__(self, name: str, request: Callable[[int], object], interval: float = 1.0) -> None:
        super().__init__(daemon=True, name=name)
        self.request, self.interval = request, interval
        self.done = threading.Event()
        self.answered: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        for n in itertools.count(1):
            if self.done.is_set():
                return
            started = time.monotonic()
            try:
                self.request(n)
                self.answered.append(time.monotonic())
            except ProvisionerError as exc:
                self.failures.append(exc.message()[:200])
            except Exception as exc:  # every way a request fails is what the probe reports
                self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            self.done.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=60)

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time without an answered request within [since, until]."""
        marks = [since, *(t for t in self.answered if since < t < until), until]
        return max(b - a for a, b in itertools.pairwise(marks))


def service_and_api_probes(
    kubectl: Kubectl, prefix: Sequence[str], addresses: Sequence[str], port: int
) -> tuple[EverySecond, EverySecond]:
    """Not started: a GET through a NodePort (each address in turn, from inside the lab) and the API's /readyz
    from the admin machine, each once a second: what a lab test runs while it renews or upgrades. First the
    Service must have answered through every address (bounded by SERVICE_READY_TIMEOUT): a NodePort that
    kube-proxy has not programmed yet is not an outage of what the test then does."""

    def url(n: int) -> str:
        return f"http://{addresses[n % len(addresses)]}:{port}/hostname"

    def through_the_service(n: int) -> None:
        http_get(prefix, url(n), timeout=5)

    for n in range(len(addresses)):
        wait_for(f"the Service to answer at {url(n)}", functools.partial(through_the_service, n), SERVICE_READY_TIMEOUT)

    def through_the_api(n: int) -> None:
        kubectl.run("get", "--raw", "/readyz", "--request-timeout=5s", timeout=20)

    return EverySecond("service", through_the_service), EverySecond("api", through_the_api)
