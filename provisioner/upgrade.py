"""`provisioner upgrade`: move a running cluster to the Kubernetes release the spec names, one minor version
at a time, rolling, with a preflight first and a lock on the cluster.

In order (the version-skew policy: the control plane before the kubelets):

1. Preflight, nothing changed yet: what every node runs (read over SSH), the step (no downgrade, no skipped
   minor, no worker ahead of the masters), every etcd member healthy, every worker Ready, the target's
   artifact set present (built or fetched first); PodDisruptionBudgets that allow no disruption now are
   named up front, since the drain of a worker running their pods will stop on them.
2. The lock: an annotation on the kube-system namespace names the target and this admin machine's process.
   Another upgrade that holds it is refused; one of this machine whose process is gone is taken over.
3. The masters not at the target, one at a time: `up` on that master alone, its plays in the rolling batch
   (etcd, then apiserver, controller-manager and scheduler, each answering before the next step), so with
   three masters the API stays up and with one it is down for one restart.
4. The workers not at the target, `batch` at a time: cordon, drain (bounded; a blocked drain stops with the
   pod and its budget named, the node left cordoned), `up` on them, uncordon, wait Ready at the target.
5. `up` on the whole cluster (the new release's addons; nothing else should be left to change), and the lock
   released.

A node is at the target when its binary (the apiserver on a master, the kubelet on a worker) reports the
target version and none of its services still runs a binary that was replaced under it. So `upgrade` again
after an interruption continues from the first node not at the target; a worker it had cordoned is
uncordoned when its turn comes.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner import layout, lifecycle, providers, spec
from provisioner.artifacts import artifact_set
from provisioner.artifacts import ensure as ensure_artifacts
from provisioner.errors import ProvisionerError
from provisioner.events import EventBus, Phase, Warning
from provisioner.hosts import NodeCommandError, Ssh
from provisioner.kube import Kubectl, KubectlError
from provisioner.processes import alive
from provisioner.spec import VERSION_PATTERN, Cluster, Node
from provisioner.state import State
from provisioner.verify.ha import etcd_health_via
from provisioner.verify.lab import node_ready

LOCK_ANNOTATION = "provisioner.io/upgrade"
LOCK_NAMESPACE = "kube-system"
# Marks a worker the upgrade cordoned, so that a re-run uncordons it and leaves alone one cordoned by hand.
CORDONED_ANNOTATION = "provisioner.io/upgrade-cordoned"
DRAIN_TIMEOUT = 300.0
READY_TIMEOUT = 300.0


class UpgradeError(ProvisionerError):
    """The upgrade was refused before anything changed, or stopped part-way (a re-run continues)."""


# --- versions ------------------------------------------------------------------------------------------


def parse_version(version: str) -> tuple[int, int, int]:
    match = VERSION_PATTERN.match(version)
    if not match:
        raise ValueError(f"{version!r} is not of the form vMAJOR.MINOR.PATCH")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def step_problems(running: Sequence[str], target: str) -> list[str]:
    """What is wrong with moving a control plane that runs `running` (its masters' versions) to `target`."""
    want = parse_version(target)
    problems = []
    for version in sorted(set(running), key=parse_version):
        have = parse_version(version)
        if have > want:
            problems.append(
                f"spec.kubernetes.version: {target} is older than {version}, which the cluster runs: downgrades "
                f"are not supported; set it back to {version} (or newer)"
            )
        elif have[:2] != want[:2] and (have[0], have[1] + 1) != want[:2]:
            problems.append(
                f"spec.kubernetes.version: {target} is more than one minor version after {version}, which the "
                f"cluster runs: upgrade one minor version at a time, to v{have[0]}.{have[1] + 1} first"
            )
    return problems


# --- what the nodes run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeState:
    name: str
    role: str
    version: str  # what its binary reports ("" when it cannot tell)
    stale: tuple[str, ...] = ()  # services still running a binary replaced on disk
    down: tuple[str, ...] = ()  # services with no running process

    def at(self, target: str) -> bool:
        return self.version == target and not self.stale


def version_binary(role: str) -> str:
    """The binary whose version is the node's: the apiserver on a master, the kubelet on a worker."""
    return "kube-apiserver" if role == "master" else "kubelet"


def node_script(role: str, units: Sequence[str]) -> str:
    """Prints `version V`, then per unit `exe UNIT PATH` (PATH ends in " (deleted)" when the binary was
    replaced under the running process) or `down UNIT`."""
    binary = shlex.quote(f"{layout.DIRS.bin}/{version_binary(role)}")
    lines = [f"echo \"version $({binary} --version 2>/dev/null | awk '{{print $2}}')\""]
    for unit in units:
        u = shlex.quote(unit)
        lines.append(
            f'pid=$(systemctl show -p MainPID --value {u} 2>/dev/null); if [ -n "$pid" ] && [ "$pid" != 0 ]; '
            f'then echo "exe {unit} $(readlink /proc/$pid/exe)"; else echo "down {unit}"; fi'
        )
    return "\n".join(lines) + "\n"


def parse_node_state(node: Node, text: str) -> NodeState:
    version, stale, down = "", [], []
    for line in text.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind == "version":
            version = rest.strip()
        elif kind == "exe":
            unit, _, exe = rest.partition(" ")
            if exe.endswith("(deleted)"):
                stale.append(unit)
        elif kind == "down":
            down.append(rest.strip())
    return NodeState(node.name, node.role, version, tuple(stale), tuple(down))


def read_node(ssh: Ssh, cluster: Cluster, node: Node) -> NodeState:
    units = [u.name for u in layout.installed_units(node.role, len(cluster.masters))]
    try:
        text = ssh.text(node.name, node_script(node.role, units), timeout=120)
    except NodeCommandError as exc:
        raise UpgradeError(
            f"node {node.name}",
            f"cannot be read over SSH: {exc.cause}",
            "start it (`provisioner status` shows which are down) or replace it, then run upgrade again",
        ) from None
    return parse_node_state(node, text)


def read_nodes(ssh: Ssh, cluster: Cluster) -> list[NodeState]:
    return [read_node(ssh, cluster, node) for node in cluster.spec.nodes]


# --- the plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpgradePlan:
    target: str
    running: tuple[str, ...]  # the masters' versions before
    masters: tuple[str, ...]  # to upgrade, in order
    workers: tuple[tuple[str, ...], ...]  # batches, in order
    blockers: tuple[str, ...] = ()  # budgets that will stop a drain, as sentences

    @property
    def empty(self) -> bool:
        return not self.masters and not self.workers

    @property
    def count(self) -> int:
        return len(self.masters) + sum(len(b) for b in self.workers)


def plan(cluster: Cluster, nodes: Sequence[NodeState], batch: int) -> UpgradePlan:
    """Which nodes move, in which order; refused (nothing changed) when the step is not allowed."""
    target = cluster.spec.kubernetes.version
    masters = [n for n in nodes if n.role == "master"]
    workers = [n for n in nodes if n.role == "worker"]
    problems = step_problems([m.version for m in masters if m.version], target)
    unknown = [n.name for n in nodes if not n.version]
    if unknown:
        problems.append(f"{', '.join(unknown)}: the installed binary reports no version; run `provisioner up` first")
    newest_master = max((parse_version(m.version) for m in masters if m.version), default=None)
    for worker in workers:
        if worker.version and newest_master is not None and parse_version(worker.version) > newest_master:
            problems.append(
                f"node {worker.name}: its kubelet {worker.version} is newer than every apiserver: the version-skew "
                "policy allows kubelets older than the control plane, never newer"
            )
    down = [f"{n.name} ({', '.join(n.down)})" for n in nodes if n.down]
    if down:
        problems.append(f"services not running on {'; '.join(down)}: bring them back (`provisioner up`) first")
    if problems:
        raise UpgradeError(f"upgrade to {target}", "refused before anything changed:\n" + "\n".join(problems))
    if batch < 1:
        raise UpgradeError("--batch", f"{batch} is not a batch size", "give 1 or more (workers upgraded at once)")
    moving = [w.name for w in workers if not w.at(target)]
    return UpgradePlan(
        target,
        tuple(sorted({m.version for m in masters}, key=parse_version)),
        tuple(m.name for m in masters if not m.at(target)),
        tuple(tuple(moving[i : i + batch]) for i in range(0, len(moving), batch)),
    )


def pdb_blockers(pdbs: dict[str, Any], pods: dict[str, Any], workers: Sequence[str]) -> list[str]:
    """Budgets that allow no disruption now and cover pods on a worker to be drained, as sentences."""
    found = []
    for pdb in pdbs.get("items", []):
        meta, status = pdb["metadata"], pdb.get("status") or {}
        if status.get("disruptionsAllowed", 0) > 0:
            continue
        selector = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        covered = [
            f"{p['metadata']['name']} on {p['spec'].get('nodeName')}"
            for p in pods.get("items", [])
            if p["metadata"].get("namespace") == meta.get("namespace")
            and p.get("spec", {}).get("nodeName") in workers
            and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]
        if covered:
            found.append(
                f"PodDisruptionBudget {meta.get('namespace')}/{meta['name']} allows no disruption now "
                f"({status.get('currentHealthy', 0)} healthy, {status.get('desiredHealthy', 0)} required) and "
                f"covers {', '.join(covered)}: the drain of that worker will stop; scale the workload up or "
                "relax the budget"
            )
    return found


# --- the lock ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    to: str
    host: str
    pid: int
    since: str

    def text(self) -> str:
        return json.dumps({"to": self.to, "host": self.host, "pid": self.pid, "since": self.since})

    @staticmethod
    def parse(text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return Holder(str(data["to"]), str(data["host"]), int(data["pid"]), str(data["since"]))
        except (ValueError, TypeError, KeyError):
            return None

    def gone(self, host: str, alive: Callable[[int], bool]) -> bool:
        """The process that took the lock no longer runs (it can tell only on the machine that took it)."""
        return self.host == host and not alive(self.pid)


def acquire(kubectl: Kubectl, target: str) -> Holder:
    namespace = kubectl.json("get", "namespace", LOCK_NAMESPACE)
    held = (namespace["metadata"].get("annotations") or {}).get(LOCK_ANNOTATION)
    me = Holder(target, socket.gethostname(), os.getpid(), datetime.datetime.now(datetime.UTC).isoformat())
    if held is not None:
        holder = Holder.parse(held)
        if holder is None or not holder.gone(me.host, alive):
            who = (
                f"an upgrade to {holder.to} by {holder.host} (pid {holder.pid}) since {holder.since}"
                if holder
                else held
            )
            raise UpgradeError(
                f"namespace {LOCK_NAMESPACE} annotation {LOCK_ANNOTATION}",
                f"{who} holds the cluster's upgrade lock",
                "wait for it to finish; if it is gone for good, remove the lock with "
                f"`kubectl annotate namespace {LOCK_NAMESPACE} {LOCK_ANNOTATION}-` and run upgrade again",
            )
    # The resource version makes the write fail if another upgrade took the lock since it was read.
    kubectl.run(
        "annotate",
        "namespace",
        LOCK_NAMESPACE,
        f"{LOCK_ANNOTATION}={me.text()}",
        "--overwrite",
        f"--resource-version={namespace['metadata']['resourceVersion']}",
    )
    return me


def release(kubectl: Kubectl) -> None:
    kubectl.run("annotate", "namespace", LOCK_NAMESPACE, f"{LOCK_ANNOTATION}-")


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class NodeTiming:
    name: str
    role: str
    drain: float = 0.0
    converge: float = 0.0
    ready: float = 0.0

    @property
    def total(self) -> float:
        return self.drain + self.converge + self.ready


@dataclass
class UpgradeResult:
    plan: UpgradePlan
    nodes: list[NodeTiming] = field(default_factory=list)
    final_changed: int = 0
    seconds: float = 0.0


def with_version(cluster: Cluster, version: str) -> Cluster:
    body = cluster.spec.model_copy(
        update={"kubernetes": cluster.spec.kubernetes.model_copy(update={"version": version})}
    )
    return cluster.model_copy(update={"spec": body})


def prepare(
    cluster: Cluster, state: State, bus: EventBus, batch: int, *, artifact_source: str | None = None
) -> UpgradePlan:
    """The preflight: the plan, refused before anything changes; the target's artifacts built or fetched."""
    ssh = providers.node_ssh(cluster, state, bus)
    with Phase(bus, "upgrade preflight", f"to {cluster.spec.kubernetes.version}") as phase:
        nodes = read_nodes(ssh, cluster)
        planned = plan(cluster, nodes, batch)
        phase.progress(", ".join(f"{n.name} {n.version}" for n in nodes))
        if planned.empty:
            return planned
        health = etcd_health_via(ssh, cluster, cluster.masters[0])
        sick = sorted(name for name, ok in health.items() if not ok)
        if sick or len(health) != len(cluster.masters):
            raise UpgradeError(
                "etcd",
                f"members not healthy: {', '.join(sick) or 'some did not answer'} ({health})",
                "bring every master back (`provisioner verify --only etcd`) before upgrading",
            )
    ensure_artifacts(cluster, bus, source=artifact_source)
    kubectl = _kubectl(cluster, state)
    with Phase(bus, "upgrade preflight", "workers Ready, disruption budgets") as phase:
        listed = kubectl.json("get", "nodes")
        not_ready = [n["metadata"]["name"] for n in listed["items"] if not node_ready(n)[0]]
        if not_ready:
            raise UpgradeError(
                f"node {', '.join(not_ready)}",
                "is not Ready",
                "fix it first (`provisioner verify --only nodes-ready` says why), then run upgrade again",
            )
        moving = [w for b in planned.workers for w in b]
        blockers = pdb_blockers(kubectl.json("get", "pdb", "-A"), kubectl.json("get", "pods", "-A"), moving)
        for line in blockers:
            bus.emit(Warning(line))
        phase.progress(f"{len(planned.masters)} master(s), {len(moving)} worker(s) to upgrade")
    return UpgradePlan(planned.target, planned.running, planned.masters, planned.workers, tuple(blockers))


def run(
    cluster: Cluster,
    state: State,
    bus: EventBus,
    planned: UpgradePlan,
    *,
    drain_timeout: float = DRAIN_TIMEOUT,
    strategy: str | None = None,
) -> UpgradeResult:
    """Steps 2 to 5 of the module's doc, for a plan from prepare()."""
    started = time.monotonic()
    result = UpgradeResult(planned)
    kubectl = _kubectl(cluster, state)
    acquire(kubectl, planned.target)
    moving = {w for b in planned.workers for w in b}
    for node in kubectl.json("get", "nodes")["items"]:
        name = node["metadata"]["name"]
        if CORDONED_ANNOTATION in (node["metadata"].get("annotations") or {}) and name not in moving:
            uncordon(kubectl, name)  # upgraded by an earlier run that stopped before its uncordon
    total, done = planned.count, 0
    for name in planned.masters:
        done += 1
        with Phase(bus, f"upgrade {name}", f"master {done} of {total}, to {planned.target}"):
            timing = NodeTiming(name, "master")
            began = time.monotonic()
            lifecycle.up(cluster, state, bus, limit=[name], rolling=True, strategy=strategy, version_change=True)
            _restart_stale(cluster, state, bus, name)
            timing.converge = time.monotonic() - began
            result.nodes.append(timing)
    for batch in planned.workers:
        timings = {name: NodeTiming(name, "worker") for name in batch}
        done += len(batch)
        with Phase(bus, f"upgrade {', '.join(batch)}", f"worker(s) up to {done} of {total}, to {planned.target}") as ph:
            for name in batch:
                began = time.monotonic()
                ph.progress("cordon and drain", host=name)
                drain(kubectl, name, drain_timeout)
                timings[name].drain = time.monotonic() - began
            began = time.monotonic()
            lifecycle.up(cluster, state, bus, limit=list(batch), strategy=strategy, version_change=True)
            for name in batch:
                _restart_stale(cluster, state, bus, name)
                timings[name].converge = time.monotonic() - began
            for name in batch:
                began = time.monotonic()
                ph.progress("uncordon, wait Ready", host=name)
                uncordon(kubectl, name)
                wait_ready(kubectl, name, planned.target, READY_TIMEOUT)
                timings[name].ready = time.monotonic() - began
        result.nodes.extend(timings.values())
    with Phase(bus, "upgrade: whole cluster", "the new release's addons; nothing else should change"):
        final = lifecycle.up(cluster, state, bus, strategy=strategy, version_change=True)
        result.final_changed = final.changed
    release(kubectl)
    result.seconds = time.monotonic() - started
    return result


def drain(kubectl: Kubectl, node: str, timeout: float) -> None:
    kubectl.run("annotate", "node", node, f"{CORDONED_ANNOTATION}=true", "--overwrite")
    kubectl.run("cordon", node)
    began = time.monotonic()
    try:
        kubectl.run(
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 60,
        )
    except KubectlError as exc:
        blocked = blocked_pods(exc.cause)
        said = (
            "; ".join(f"pod {p} is protected by a PodDisruptionBudget that allows no disruption now" for p in blocked)
            or exc.cause[-400:]
        )
        raise UpgradeError(
            f"node {node}",
            f"the drain stopped after {time.monotonic() - began:.0f}s: {said}",
            f"the node stays cordoned; relax or remove the budget (`kubectl get pdb -A` names it) or scale its "
            f"workload up, then run `provisioner upgrade` again: it continues with {node}",
        ) from None


# kubectl drain, each time an eviction is refused: error when evicting pods/"NAME" -n "NS" (will retry ...):
# Cannot evict pod as it would violate the pod's disruption budget.
_EVICTION_REFUSED = re.compile(r'evicting pods/"([^"]+)" -n "([^"]+)".*?disruption budget')


def blocked_pods(stderr: str) -> list[str]:
    return sorted({f"{ns}/{name}" for name, ns in _EVICTION_REFUSED.findall(stderr)})


def uncordon(kubectl: Kubectl, node: str) -> None:
    kubectl.run("uncordon", node)
    kubectl.run("annotate", "node", node, f"{CORDONED_ANNOTATION}-")


def wait_ready(kubectl: Kubectl, node: str, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            got = kubectl.json("get", "node", node)
        except KubectlError as exc:
            last = exc.cause
        else:
            ready = node_ready(got)[0]
            kubelet = got["status"].get("nodeInfo", {}).get("kubeletVersion", "")
            if ready and kubelet == version:
                return
            last = f"Ready={ready}, kubelet {kubelet}"
        time.sleep(5)
    raise UpgradeError(
        f"node {node}",
        f"not Ready at {version} within {timeout:.0f}s ({last})",
        f"see `journalctl -u kubelet` on {node}, then run `provisioner upgrade` again",
    )


def _restart_stale(cluster: Cluster, state: State, bus: EventBus, name: str) -> None:
    """A service whose binary was replaced but which was not restarted (a run interrupted between the two)."""
    ssh = providers.node_ssh(cluster, state, bus)
    for unit in read_node(ssh, cluster, cluster.node(name)).stale:
        ssh.run(name, f"systemctl restart {shlex.quote(unit)}", timeout=300)


def _kubectl(cluster: Cluster, state: State) -> Kubectl:
    prefix = providers.for_cluster(cluster, state, EventBus()).command_prefix()
    return Kubectl(artifact_set(cluster).bin / "kubectl", state.kubeconfig, prefix)


def target_cluster(cluster: Cluster, to: str | None) -> Cluster:
    """The cluster as it will be: the spec's, or with `--to`'s version (checked like the spec's field)."""
    if to is None:
        return cluster
    problems = spec.version_problems(to)
    if problems:
        raise UpgradeError("--to", problems[0].removeprefix("spec.kubernetes.version: "))
    return with_version(cluster, to)
