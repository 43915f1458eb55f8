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
    if isinstance(cluster.spec.provider, spec.StaticProvider):
        raise SpecError(
            "--workers",
            [
                "--workers: the static provider cannot invent hosts; add the new hosts to spec.nodes "
                "in the spec file, then run `provisioner up`"
            ],
        )
    net = cluster.spec.network
    used_names = {n.name for n in cluster.spec.nodes}
    used_addresses = {n.address for n in cluster.spec.nodes}
    template = workers[-1]
    highest = max(int(a) for a in used_addresses if a is not None)
    candidates = (a for a in net.node_subnet.hosts() if int(a) > highest and a not in used_addresses)
    added: list[dict[str, Any]] = []
    index = 1
    for _ in range(count - len(workers)):
        while f"worker-{index}" in used_names:
            index += 1
        address = next(candidates, None)
        if address is None:
            raise SpecError(
                "spec.network.nodeSubnet",
                [f"spec.network.nodeSubnet: {net.node_subnet} has no free address left for a new worker"],
            )
        name = f"worker-{index}"
        used_names.add(name)
        added.append(
            {"name": name, "role": "worker", "address": str(address), "cpus": template.cpus, "memory": template.memory}
        )
    return added, []


def set_worker_count(path: Path, count: int) -> ScalePlan:
    """Rewrite the spec file with `count` workers. Validates the result before writing it."""
    cluster = spec.load(path)
    to_add, to_remove = plan_workers(cluster, count)
    if not to_add and not to_remove:
        return ScalePlan()
    y = _yaml()
    doc = y.load(path.read_text(encoding="utf-8"))
    nodes = doc["spec"]["nodes"]
    for name in to_remove:
        position = next(i for i, n in enumerate(nodes) if n["name"] == name)
        del nodes[position]
    for entry in to_add:
        nodes.append(copy.deepcopy(entry))
    buffer = io.StringIO()
    y.dump(doc, buffer)
    text = buffer.getvalue()
    spec.parse(YAML(typ="safe").load(text), where=str(path), base_dir=path.parent)  # never write a broken spec
    path.write_text(text, encoding="utf-8")
    return ScalePlan(added=[e["name"] for e in to_add], removed=to_remove)
