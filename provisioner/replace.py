"""`provisioner replace-master NAME`: a lost master (its machine gone or beyond repair) replaced by a new one.

The others keep running and keep their data. In order:

1. preflight: NAME is a master of a cluster of three or more, and enough of the other masters' etcd
   members answer to keep the quorum without it (two of three), else the way back is `restore`;
2. its etcd member is removed (a dead member still counts towards the quorum while it is listed);
3. its machine is destroyed (a lab VM; a static host must be reinstalled by its owner) and its own
   certificates (its etcd server and peer pair) are dropped, so the new machine gets fresh ones;
4. `up` on that master alone: a new machine, fresh certificates, and the etcd role sees an empty data dir
   beside a running cluster, so it joins as a learner and is promoted once it has caught up
   (playbooks/roles/etcd/tasks/join.yml);
5. every member healthy, the new apiserver ready.

Each step can be repeated: a re-run after a failure finds the member already removed, the machine already
gone or already new, and continues.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

from provisioner import layout, lifecycle, pki, providers
from provisioner.artifacts import artifact_set
from provisioner.errors import ProvisionerError
from provisioner.events import EventBus, Phase
from provisioner.hosts import NodeCommandError
from provisioner.spec import Cluster, Node, StaticProvider
from provisioner.state import State

HEALTHY_TIMEOUT = 600.0  # for every member to report healthy after the join


@dataclass(frozen=True)
class Member:
    id: str  # hex, as etcdctl takes it
    name: str  # "" while added but never started
    peer_urls: tuple[str, ...]


@dataclass
class ReplaceResult:
    name: str
    removed: list[Member]
    members_after: list[Member]
    changed_per_host: dict[str, int]
    seconds: float


def parse_members(text: str, source: str) -> list[Member]:
    """`etcdctl member list -w json` as members (IDs in hex, as `member remove` takes them)."""
    try:
        doc = json.loads(text)
        return [
            Member(f"{int(m['ID']):x}", str(m.get("name", "")), tuple(m.get("peerURLs", [])))
            for m in doc.get("members", [])
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ProvisionerError(
            source, "did not print etcd's member list as JSON", "run it by hand to see why"
        ) from None


def stale_members(members: list[Member], master: Node, peer_port: int) -> list[Member]:
    """The entries of a replaced master: its name, or its peer URL (an entry added and never started)."""
    url = f"https://{master.address}:{peer_port}"
    return [m for m in members if m.name == master.name or url in m.peer_urls]


def preflight(cluster: Cluster, name: str) -> Node:
    """The master to replace, refused fast and before anything changes when that cannot work."""
    masters = {m.name: m for m in cluster.masters}
    if name not in masters:
        worker = name in {w.name for w in cluster.workers}
        raise ProvisionerError(
            f"replace-master {name}",
            f"{name} is not a master of cluster {cluster.name}" + (" (it is a worker)" if worker else ""),
            f"name one of its masters: {', '.join(masters)}" + ("; workers come and go with `scale`" if worker else ""),
        )
    if len(masters) < 3:
        raise ProvisionerError(
            f"replace-master {name}",
            f"cluster {cluster.name} has {len(masters)} master(s): replacing one leaves no etcd member with the data",
            "restore from a backup (`provisioner restore`), or grow to three masters first",
        )
    return masters[name]


class Replacement:
    def __init__(self, cluster: Cluster, state: State, bus: EventBus) -> None:
        if not state.hosts_file.is_file() or not state.inventory_file.is_file():
            raise ProvisionerError(
                f"cluster {cluster.name}",
                f"has no generated inventory or host list under {state.root}",
                "bring it up first with `provisioner up`",
            )
        self.cluster, self.state, self.bus = cluster, state, bus
        self.static = isinstance(cluster.spec.provider, StaticProvider)
        self.provider = providers.for_cluster(cluster, state, bus)
        self.ssh = providers.node_ssh(cluster, state, bus)

    def members(self, via: str) -> list[Member]:
        proc = self.ssh.run(via, f"{layout.ETCDCTL} member list -w json", timeout=90)
        return parse_members(proc.stdout.decode(errors="replace"), f"etcdctl member list on {via}")

    def healthy(self, masters: list[Node]) -> list[str]:
        """The masters whose own etcd member answers a health check now."""
        answered = []
        for master in masters:
            try:
                self.ssh.run(master.name, f"{layout.ETCDCTL} endpoint health", timeout=60)
            except NodeCommandError:
                continue
            answered.append(master.name)
        return answered

    def run(self, name: str, *, strategy: str | None = None) -> ReplaceResult:
        started = time.monotonic()
        node = preflight(self.cluster, name)
        if not (artifact_set(self.cluster).bin / "kubectl").is_file():
            raise ProvisionerError(
                str(artifact_set(self.cluster).root),
                "the artifact set is missing (`up` needs it to build the new master)",
                "run `provisioner artifacts` first",
            )
        others = [m for m in self.cluster.masters if m.name != name]
        quorum = len(self.cluster.masters) // 2 + 1
        with Phase(self.bus, "preflight", f"etcd on the masters other than {name}") as phase:
            answering = self.healthy(others)
            if len(answering) < quorum:
                raise ProvisionerError(
                    f"replace-master {name}",
                    f"only {len(answering)} of the other masters' etcd members answer "
                    f"({', '.join(answering) or 'none'}); {quorum} are needed to keep the quorum without {name}",
                    "bring the other masters back first, or restore from a backup (`provisioner restore`)",
                )
            via = answering[0]
            phase.progress(f"{', '.join(answering)} healthy; asking {via}")
        peer_port = layout.PORTS["etcd_peer"]
        with Phase(self.bus, f"remove {name}", "etcd member, machine, certificates") as phase:
            removed = stale_members(self.members(via), node, peer_port)
            for member in removed:
                phase.progress(f"etcd member remove {member.id} ({member.name or 'never started'})", host=via)
                self.ssh.run(via, f"{layout.ETCDCTL} member remove {member.id}", timeout=90)
            if name in self.ssh.nodes:
                self.ssh.close(name)
            if self.static:
                phase.progress("static host: reinstalled (or reset) by its owner; its old host key is forgotten")
                subprocess.run(
                    ["ssh-keygen", "-R", str(node.address), "-f", str(self.state.known_hosts)],
                    capture_output=True,
                    check=False,
                    timeout=30,
                )
            else:
                self.provider.destroy([node])
            for stem in pki.etcd_certs(self.cluster, node).values():
                for suffix in (".crt", ".key"):
                    (self.state.pki_dir / f"{stem}{suffix}").unlink(missing_ok=True)
        up = lifecycle.up(self.cluster, self.state, self.bus, strategy=strategy, limit=[name])
        # The new machine's connection details (a new VM has new keys and maybe a new management address).
        self.ssh = providers.node_ssh(self.cluster, self.state, self.bus)
        with Phase(self.bus, "etcd members", f"every member healthy, {name} among them") as phase:
            after = self.wait_all_healthy(via, node)
            phase.progress(", ".join(f"{m.name} {m.id}" for m in after))
        return ReplaceResult(
            name,
            removed,
            after,
            {host: stats.changed for host, stats in up.run.hosts.items()},
            time.monotonic() - started,
        )

    def wait_all_healthy(self, via: str, node: Node) -> list[Member]:
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        last = ""
        while True:
            try:
                members = self.members(via)
                names = sorted(m.name for m in members)
                if names == sorted(m.name for m in self.cluster.masters):
                    self.ssh.run(via, f"{layout.ETCDCTL} endpoint health --cluster", timeout=90)
                    return members
                last = f"members {names}"
            except (NodeCommandError, ProvisionerError) as exc:
                last = exc.message()
            if time.monotonic() > deadline:
                raise ProvisionerError(
                    f"etcd after replacing {node.name}",
                    f"not every member healthy within {HEALTHY_TIMEOUT:.0f} s: {last}",
                    f"read `journalctl -u etcd` on {node.name}; a re-run of replace-master continues",
                )
            time.sleep(5)


def replace_master(
    cluster: Cluster, state: State, bus: EventBus, name: str, *, strategy: str | None = None
) -> ReplaceResult:
    return Replacement(cluster, state, bus).run(name, strategy=strategy)
