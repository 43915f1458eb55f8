"""Edits of the spec file that the CLI makes for the user (`scale`), keeping their comments and layout.

The spec file stays the single source of truth: `scale` writes the new node list into it (so `git diff`
shows what changed), and `up` then converges the machines to the file.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from provisioner import spec
from provisioner.errors import SpecError


@dataclass(frozen=True)
class ScalePlan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed


def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments, key order and quoting
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def plan_workers(cluster: spec.Cluster, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """New worker entries to append, or names of workers to remove (newest first), to reach `count`."""
    if count < 1:
        raise SpecError("--workers", [f"--workers: {count} is too few; a cluster needs at least 1 worker"])
    workers = cluster.workers
    if count <= len(workers):
        return [], [n.name for n in reversed(workers[count:])]
    _refuse_static(cluster, "--workers")
    return _new_nodes(cluster, "worker", count - len(workers), first_index=1, after=None), []


def plan_masters(cluster: spec.Cluster, count: int) -> list[dict[str, Any]]:
    """New master entries to reach `count` (the control plane grows; it never shrinks this way)."""
    masters = cluster.masters
    if count not in spec.SUPPORTED_MASTER_COUNTS:
        allowed = " or ".join(str(n) for n in spec.SUPPORTED_MASTER_COUNTS)
        raise SpecError(
            "--masters",
            [f"--masters: {count} is not a supported master count; etcd needs an odd number of members: {allowed}"],
        )
    if count < len(masters):
        raise SpecError(
            "--masters",
            [
                f"--masters: {count} is fewer than the {len(masters)} masters the cluster has; the control plane "
                "grows but is not shrunk by scale (each master holds an etcd member); a lost master is replaced "
                "with `provisioner replace-master NAME`"
            ],
        )
    if count == len(masters):
        return []
    _refuse_static(cluster, "--masters")
    # Next to the masters there are: the first free addresses after the last one (the HA lab's layout).
    return _new_nodes(cluster, "master", count - len(masters), first_index=2, after=masters[-1])


def _refuse_static(cluster: spec.Cluster, option: str) -> None:
    if isinstance(cluster.spec.provider, spec.StaticProvider):
        raise SpecError(
            option,
            [
                f"{option}: the static provider cannot invent hosts; add the new hosts to spec.nodes "
                "in the spec file, then run `provisioner up`"
            ],
        )


def _new_nodes(
    cluster: spec.Cluster, role: str, how_many: int, *, first_index: int, after: spec.Node | None
) -> list[dict[str, Any]]:
    """Entries for `how_many` new nodes of `role`: the next free names ROLE-N and addresses, and the sizes of
    the last node of that role. Addresses come after `after` when given, else after every node's."""
    net = cluster.spec.network
    used_names = {n.name for n in cluster.spec.nodes}
    used_addresses = {n.address for n in cluster.spec.nodes}
    template = [n for n in cluster.spec.nodes if n.role == role][-1]
    start = (
        int(after.address)
        if after is not None and after.address is not None
        else max(int(a) for a in used_addresses if a is not None)
    )
    candidates = (a for a in net.node_subnet.hosts() if int(a) > start and a not in used_addresses)
    added: list[dict[str, Any]] = []
    index = first_index
    for _ in range(how_many):
        while f"{role}-{index}" in used_names:
            index += 1
        address = next(candidates, None)
        if address is None:
            raise SpecError(
                "spec.network.nodeSubnet",
                [f"spec.network.nodeSubnet: {net.node_subnet} has no free address left for a new {role}"],
            )
        name = f"{role}-{index}"
        used_names.add(name)
        added.append(
            {"name": name, "role": role, "address": str(address), "cpus": template.cpus, "memory": template.memory}
        )
    return added


def set_worker_count(path: Path, count: int) -> ScalePlan:
    """Rewrite the spec file with `count` workers. Validates the result before writing it."""
    to_add, to_remove = plan_workers(spec.load(path), count)
    return _rewrite(path, to_add, to_remove)


def set_master_count(path: Path, count: int) -> ScalePlan:
    """Rewrite the spec file with `count` masters, the new ones listed after the last master."""
    return _rewrite(path, plan_masters(spec.load(path), count), [])


def set_version(path: Path, version: str) -> bool:
    """Write spec.kubernetes.version (what `upgrade --to` does once its preflight passed); False if it was."""
    y = _yaml()
    doc = y.load(path.read_text(encoding="utf-8"))
    kubernetes = doc["spec"].setdefault("kubernetes", {})
    if kubernetes.get("version") == version:
        return False
    kubernetes["version"] = version
    _write(path, y, doc)
    return True


def _rewrite(path: Path, to_add: list[dict[str, Any]], to_remove: list[str]) -> ScalePlan:
    if not to_add and not to_remove:
        return ScalePlan()
    y = _yaml()
    doc = y.load(path.read_text(encoding="utf-8"))
    nodes = doc["spec"]["nodes"]
    for name in to_remove:
        position = next(i for i, n in enumerate(nodes) if n["name"] == name)
        del nodes[position]
    for entry in to_add:
        # After the last node of its role, so masters stay listed together (and masters[0] stays first).
        same = [i for i, n in enumerate(nodes) if n.get("role") == entry["role"]]
        nodes.insert(same[-1] + 1 if same else len(nodes), copy.deepcopy(entry))
    _write(path, y, doc)
    return ScalePlan(added=[e["name"] for e in to_add], removed=to_remove)


def _write(path: Path, y: YAML, doc: Any) -> None:
    """The edited document back into the file, comments and order kept; never a spec that does not load."""
    buffer = io.StringIO()
    y.dump(doc, buffer)
    text = buffer.getvalue()
    spec.parse(YAML(typ="safe").load(text), where=str(path), base_dir=path.parent)
    path.write_text(text, encoding="utf-8")
