"""`scale --workers N`: grow or shrink the worker pool without touching the nodes that stay.

Growing: the spec file gets the new workers, only their machines are created, and the Ansible phases run
only on them (`--limit`); per-host changed counts show the existing nodes were left alone.
Shrinking: each removed worker is cordoned and drained (its pods are rescheduled), deleted from the
cluster, and its machine destroyed; only then is it taken out of the spec file, so a failure part-way
leaves the spec describing what still exists and a re-run continues.

`scale --masters 3` (or 5) grows the control plane: the spec file gets the new masters, and `up` runs on the
whole cluster, since every node changes: the existing etcd member moves from loopback to its node address
and takes the new members in one at a time (playbooks/roles/etcd), every apiserver gets the new etcd
members and a certificate naming the new masters, and the workers reach all apiservers through their
loopback balancer (playbooks/roles/apiserver_lb) instead of the first master. The data stays where it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from provisioner import hosts, inventory, lifecycle, providers, spec, spec_edit
from provisioner.artifacts import artifact_set
from provisioner.errors import MachineError
from provisioner.events import EventBus, Phase
from provisioner.kube import Kubectl, KubectlError
from provisioner.state import State

DRAIN_TIMEOUT = "300s"


@dataclass
class ScaleResult:
    plan: spec_edit.ScalePlan
    changed_per_host: dict[str, int] = field(default_factory=dict)


def scale(
    path: Path, workers: int | None, bus: EventBus, *, masters: int | None = None, strategy: str | None = None
) -> ScaleResult:
    cluster = spec.load(path)
    state = State.for_cluster(cluster.name)
    if masters is not None:
        spec_edit.plan_masters(cluster, masters)  # refused before anything changes
    if workers is not None:
        spec_edit.plan_workers(cluster, workers)
    result = ScaleResult(spec_edit.ScalePlan())
    if masters is not None:
        result = grow_masters(path, state, bus, masters, strategy=strategy)
    if workers is not None:
        grown = scale_workers(path, state, bus, workers, strategy=strategy)
        result = ScaleResult(
            spec_edit.ScalePlan(result.plan.added + grown.plan.added, grown.plan.removed),
            {**result.changed_per_host, **grown.changed_per_host},
        )
    return result


def grow_masters(path: Path, state: State, bus: EventBus, masters: int, *, strategy: str | None = None) -> ScaleResult:
    """New masters written into the spec file, then `up` on every node (see the module's doc)."""
    cluster = spec.load(path)
    if not state.hosts_file.is_file():
        raise MachineError(
            f"cluster {cluster.name}",
            "has not been brought up yet, so there is no control plane to grow",
            "bring it up first (`provisioner up`), or write the masters into the spec and run `up`",
        )
    result = ScaleResult(spec_edit.set_master_count(path, masters))
    # Also when the spec already had them (a re-run after a failure part-way): `up` converges what is left.
    if masters > 1:
        up = lifecycle.up(spec.load(path), state, bus, strategy=strategy)
        result.changed_per_host = {name: stats.changed for name, stats in up.run.hosts.items()}
    return result


def scale_workers(path: Path, state: State, bus: EventBus, workers: int, *, strategy: str | None = None) -> ScaleResult:
    cluster = spec.load(path)
    to_add, to_remove = spec_edit.plan_workers(cluster, workers)
    if to_remove:
        _remove_workers(cluster, state, bus, to_remove)
    plan = spec_edit.set_worker_count(path, workers)
    if to_remove:
        write_inventory(path, state, bus)
    result = ScaleResult(plan)
    if to_add:
        grown = spec.load(path)
        up = lifecycle.up(grown, state, bus, strategy=strategy, limit=[e["name"] for e in to_add])
        result.changed_per_host = {name: stats.changed for name, stats in up.run.hosts.items()}
    return result


def write_inventory(path: Path, state: State, bus: EventBus) -> None:
    """The host list, inventory and group vars again, from the spec as it is now: verify, drift and the
    host checks read them, and must not go looking for the workers that were just removed."""
    cluster = spec.load(path)
    names = {n.name for n in cluster.spec.nodes}
    remaining = [h for h in hosts.load(state) if h.name in names]
    hosts.save(state, remaining)
    inventory.write(cluster, state, remaining, artifact_set(cluster).root)


def _remove_workers(cluster: spec.Cluster, state: State, bus: EventBus, names: list[str]) -> None:
    provider = providers.for_cluster(cluster, state, bus)
    kubectl = Kubectl(artifact_set(cluster).bin / "kubectl", state.kubeconfig, provider.command_prefix())
    for name in names:
        with Phase(bus, f"remove {name}", "cordon, drain, delete node, destroy machine") as phase:
            if _node_registered(kubectl, name):
                _kubectl(kubectl, name, "cordon", name)
                phase.progress("draining: pods move to the remaining workers", host=name)
                _kubectl(
                    kubectl,
                    name,
                    "drain",
                    name,
                    "--ignore-daemonsets",
                    "--delete-emptydir-data",
                    "--force",
                    f"--timeout={DRAIN_TIMEOUT}",
                )
                _kubectl(kubectl, name, "delete", "node", name, "--wait=true")
            else:
                phase.progress("not registered in the cluster; nothing to drain", host=name)
            provider.destroy([cluster.node(name)])


def _node_registered(kubectl: Kubectl, name: str) -> bool:
    try:
        found = kubectl.run("get", "node", name, "-o", "name", check=False, timeout=300)
    except KubectlError as exc:
        found_error = exc.cause
    else:
        if found.returncode == 0:
            return True
        if "NotFound" in found.stderr:
            return False
        found_error = found.stderr.strip() or "kubectl failed"
    raise MachineError(
        f"node {name}",
        f"cannot ask the cluster about it: {found_error}",
        "check that the cluster answers (`provisioner verify --only nodes-ready`), then re-run scale",
    )


def _kubectl(kubectl: Kubectl, node: str, *args: str) -> None:
    try:
        kubectl.run(*args, timeout=420)
    except KubectlError as exc:
        raise MachineError(
            f"node {node}",
            f"`kubectl {' '.join(args)}` failed: {exc.cause[-400:]}",
            "fix the cause (a PodDisruptionBudget blocking the drain, an unreachable API) and re-run scale",
        ) from None
