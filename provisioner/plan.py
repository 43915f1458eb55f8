"""`provisioner plan`: what `up` would change on each host, with nothing changed anywhere.

plan = artifacts (a cache, not the cluster) -> the machines `up` last saw (hosts.json) -> preflight -> a
scratch copy of the PKI, completed as `up` would complete it (what it issues is reported) -> an inventory in the
scratch copy generated from the spec -> site.yml in Ansible's check mode with diffs, limited to the machines
that exist -> per host, every task that would change something, the files of the artifact set it would replace
(with the versions), the diffs of text files and the handlers that would run (the services that restart).

Nodes of the spec without a machine are listed as provisioned from nothing; no machine is created, nothing in
the state directory changes (the scratch copy is removed), and check mode changes nothing on the nodes. The
Ansible run's directory is kept under the state's runs, as every run's is.

Truthful means: the check run goes through the same code path as `up`'s (lifecycle.converge), and every task
reports in check mode what it would do for real (the roles' probes run in check mode, their changes report
without running: playbooks/library/node_command.py). What check mode cannot see is named: a service whose unit
the run would install first (systemd knows nothing of it yet) is listed as new, and a host whose first converge
did not finish is refused (the prep role says which of its units it lacks), since its later tasks would read
what the earlier ones had not written.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import hosts as hosts_mod
from provisioner import inventory, layout, pki, preflight, providers, runner
from provisioner.artifacts import ArtifactSet, cache_dir
from provisioner.artifacts import ensure as ensure_artifacts
from provisioner.artifacts import manifest as manifest_mod
from provisioner.errors import ArtifactError
from provisioner.events import EventBus, Phase
from provisioner.lifecycle import converge
from provisioner.spec import Cluster, VagrantProvider
from provisioner.state import State
from provisioner.versions import SUPPORTED


@dataclass(frozen=True)
class BinaryChange:
    """A file of the artifact set a host would get anew."""

    path: str  # on the node
    component: str  # the pinned component it comes from (provisioner/layout.py)
    # The installed file's version: that of the cached artifact set whose manifest has its checksum; "" when
    # nothing is installed, "unknown" when no cached set of a supported release has it (altered, or a set
    # built again since).
    old: str
    new: str

    @property
    def versions(self) -> str:
        return f"{self.old} -> {self.new}" if self.old else self.new


@dataclass
class HostPlan:
    name: str
    role: str
    changes: list[runner.TaskChange] = field(default_factory=list)
    binaries: list[BinaryChange] = field(default_factory=list)

    @property
    def restarts(self) -> list[str]:
        """The handlers that would run: services restarted, settings applied."""
        return [c.task for c in self.changes if c.handler]

    @property
    def new_services(self) -> list[str]:
        """Units the run would install first: check mode cannot ask systemd about them, `up` starts them."""
        units = {f"{layout.DIRS.units}/{u.name}.service": u.name for u in layout.UNITS}
        return [units[d.path] for c in self.changes for d in c.diffs if d.new and d.path in units]


@dataclass
class Plan:
    cluster: str
    kubernetes_version: str
    hosts: list[HostPlan]  # the machines that exist and are in the spec, checked task by task
    provisioned: list[str]  # nodes of the spec with no machine yet: made and provisioned from nothing
    creates_machines: bool  # the provider makes machines (Vagrant); static hosts are only provisioned
    unlisted: list[str]  # machines `up` saw that the spec no longer names: `up` leaves them alone
    issued: list[str]  # what the admin machine would issue in the PKI (leaves, kubeconfigs, CAs)
    run: runner.RunResult | None  # the check run (None when no machine exists)
    running_version: str | None = None  # what the cluster last converged to (None: never, or not recorded)

    @property
    def version_change(self) -> bool:
        """`up` would refuse this spec: only `provisioner upgrade` changes the version (lifecycle.up)."""
        return self.running_version is not None and self.running_version != self.kubernetes_version

    @property
    def changes(self) -> int:
        return sum(len(h.changes) for h in self.hosts)

    @property
    def empty(self) -> bool:
        """Nothing would change: `up` would report 0 changed tasks and issue nothing."""
        return not (self.changes or self.provisioned or self.issued)


def plan(
    cluster: Cluster,
    state: State,
    bus: EventBus,
    *,
    artifact_source: str | None = None,
    strategy: str | None = None,
) -> Plan:
    """What `up` with this spec would change, found without changing anything (the module's docstring)."""
    aset = ensure_artifacts(cluster, bus, source=artifact_source)
    provider = providers.for_cluster(cluster, state, bus)
    known = {n.name for n in cluster.spec.nodes}
    saved = hosts_mod.load(state) if state.hosts_file.is_file() else []
    existing = [h for h in saved if h.name in known]
    planned = [n for n in cluster.spec.nodes if n.name not in {h.name for h in existing}]
    unlisted = [h.name for h in saved if h.name not in known]
    prefix = provider.command_prefix()
    if existing:
        with Phase(bus, "preflight", f"{len(existing)} host(s)"):
            preflight.check(existing, prefix)

    # Inside the state directory when there is one: it holds the keys already, and a copy left behind by a
    # killed run stays as private as they are.
    with tempfile.TemporaryDirectory(prefix=".plan-", dir=state.root if state.root.is_dir() else None) as tmp:
        scratch = State(Path(tmp))
        with Phase(bus, "certificates", f"a copy of {state.pki_dir}") as phase:
            if state.pki_dir.is_dir():
                shutil.copytree(state.pki_dir, scratch.pki_dir, symlinks=True)
            made = pki.ensure(cluster, scratch)
            phase.progress(f"{len(made.issued)} would be issued, {len(made.reused)} reused")
        run = None
        if existing:
            inventory.write(cluster, scratch, existing, aset.root, planned)
            run = converge(
                cluster,
                state,
                bus,
                provider,
                aset.root,
                strategy=strategy,
                limit=[h.name for h in existing] if planned else None,
                check=True,
                inventory_file=scratch.inventory_file,
                server_log=scratch.root / "artifact-server.log",
            )

    host_plans = [HostPlan(h.name, h.role) for h in existing]
    if run is not None:
        by_name = {h.name: h for h in host_plans}
        for change in run.changes:
            by_name[change.host].changes.append(change)
        for host in host_plans:
            host.binaries = _binaries(cluster, aset, host, run.installed_sums.get(host.name, {}))
    return Plan(
        cluster.name,
        cluster.spec.kubernetes.version,
        host_plans,
        [n.name for n in planned],
        isinstance(cluster.spec.provider, VagrantProvider),
        unlisted,
        made.issued,
        run,
        _running_version(state),
    )


def _running_version(state: State) -> str | None:
    try:
        return state.version_file.read_text().strip() or None
    except FileNotFoundError:
        return None


def _binaries(
    cluster: Cluster, aset: ArtifactSet, host: HostPlan, installed: dict[str, str | None]
) -> list[BinaryChange]:
    """The artifact-set files among what the host's tasks would change, with the installed and new versions."""
    files = {a.target: a for a in layout.files_for(host.role)}
    replaced = [item for c in host.changes for item in c.items if item in files]
    current = manifest_mod.load(aset.manifest, aset.kubernetes_version)
    known = _known_versions(cluster) if replaced else {}
    found = []
    for path in replaced:
        artifact = files[path]
        entry = current.files.get(artifact.path)
        sha = installed.get(path)
        old = "" if sha is None else known.get((artifact.path, sha), "unknown")
        found.append(BinaryChange(path, artifact.component, old, entry.version if entry else "?"))
    return found


def _known_versions(cluster: Cluster) -> dict[tuple[str, str], str]:
    """(artifact path, sha256) -> version, from the manifests of the cached artifact sets of supported releases:
    how an installed file's version is told from its checksum."""
    known: dict[tuple[str, str], str] = {}
    for version in SUPPORTED:
        cached = ArtifactSet(cache_dir(cluster) / version, version)
        try:
            files = manifest_mod.load(cached.manifest, version).files
        except ArtifactError:
            continue
        for path, entry in files.items():
            known.setdefault((path, entry.sha256), entry.version)
    return known
