"""Self-healing checks: a deleted pod, a killed container, kill -9 of each daemon, a worker powered off.

The kills and the shutdown take the control plane or a worker down for a while; verify runs them last.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable

from provisioner import layout, paths
from provisioner.spec import VagrantProvider
from provisioner.verify import probe
from provisioner.verify.kube import CheckFailed, NotYet, Ssh, wait_for
from provisioner.verify.lab import (
    POD_READY_TIMEOUT,
    ClusterCheck,
    Lab,
    Skip,
    agnhost_deployment,
    deploy,
    describe_pods,
    is_ready,
    node_ready,
    pods,
    scratch_namespace,
    wait_ready_pods,
)

CRICTL = f"crictl --runtime-endpoint=unix://{layout.CONTAINERD_SOCKET}"
# How long a restarted apiserver may take to be ready again: the same bound `up` gives it to start (the
# control_plane role's control_plane_start_timeout). On an emulated master its post-start hooks alone took
# 119 s to 240+ s.
RESTART_READY_TIMEOUT = float(paths.role_defaults("control_plane")["control_plane_start_timeout"])


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

        def back_ready() -> None:
            ready, condition = node_ready(lab.kubectl.json("get", "node", node))
            if not ready:
                raise NotYet(f"{node} Ready={condition.get('status', '?')}")

        wait_for(f"node {node} Ready", back_ready, 240, interval=3)
    if unit in ("kube-scheduler", "kube-controller-manager"):
        port = layout.PORTS[layout.unit(unit).ports[0]]

        def healthz() -> None:
            out = component_healthz(lab.ssh, node, port)
            if out != "ok":
                raise NotYet(f"{unit} /healthz: {out or 'no answer'}")

        wait_for(f"{unit} /healthz on {node}", healthz, 180, interval=3)


def component_healthz(ssh: Ssh, node: str, port: int) -> str:
    """What a component's /healthz on the node's loopback answers ('' unless 2xx); its certificate is not verified."""
    command = probe.node_command(probe.get_args(f"https://127.0.0.1:{port}/healthz", 10, verify=False))
    proc = ssh.run(node, command, check=False)
    return probe.read_answer(proc.stdout.decode())[1].strip() if proc.returncode == 0 else ""


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
                if node_ready(lab.kubectl.json("get", "node", victim.name))[0]:
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
                if not node_ready(lab.kubectl.json("get", "node", victim.name))[0]:
                    raise NotYet(f"{victim.name} not Ready yet")

            wait_for(f"node {victim.name} Ready again after restart", ready_again, 600, interval=5)
        t_back = time.monotonic() - started
        before = ", ".join(f"{n} {c}" for n, c in sorted(placed.items()))
        return (
            f"pods on {before}; {victim.name} NotReady after {t_notready:.0f}s, both pods on {survivor.name} "
            f"after {t_moved:.0f}s, {victim.name} Ready again after {t_back:.0f}s"
        )


GROUP: list[ClusterCheck] = [
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
