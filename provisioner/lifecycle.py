"""`up` and `destroy`: the whole path from a spec to a running cluster, and back.

up = artifacts -> machines -> preflight -> inventory -> certificates -> the Ansible phases (prep, pki,
etcd, control plane, workers, addons) -> admin kubeconfig. Every step is idempotent, so `up` on a
built cluster changes nothing and `up` after a failure resumes. The core only emits events; the
returned :class:`UpResult` carries what the CLI's summary prints.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from provisioner import admin, certs, endpoints, forwarder, inventory, pki, preflight, providers, runner
from provisioner import hosts as hosts_mod
from provisioner.artifacts import artifact_set
from provisioner.artifacts import ensure as ensure_artifacts
from provisioner.artifacts.serve import serving
from provisioner.errors import ProvisionerError
from provisioner.events import Event, EventBus, Phase, PhaseFinished, Warning
from provisioner.kube import Kubectl, KubectlError
from provisioner.providers.base import Provider
from provisioner.spec import Cluster, StaticProvider
from provisioner.state import State

# The playbook's batch size for the plays that restart services (site.yml `serial`), when given.
ROLLING_VAR = "rolling_serial"
# How long the admin machine waits for `kubectl get nodes` to answer once Ansible has finished.
ADMIN_WAIT_SECONDS = 120


class ClusterNotReady(ProvisionerError):
    """The cluster was converged but does not answer from the admin machine."""


@dataclass(frozen=True)
class PhaseTiming:
    name: str
    seconds: float
    changed: int | None = None  # Ansible phases only


@dataclass
class UpResult:
    kubeconfig: Path  # inside the lab (with `prefix`): what verify, drift and the tests use
    prefix: list[str]
    kubectl: Path
    run: runner.RunResult
    phases: list[PhaseTiming] = field(default_factory=list)
    admin: AdminAccess | None = None  # how the user's own shell reaches the cluster

    @property
    def changed(self) -> int:
        return self.run.changed

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    def kubectl_hint(self) -> str:
        """The command a person types to reach the cluster from their own shell."""
        if self.admin is not None and self.admin.merged_into is not None:
            return f"kubectl --context {self.admin.context} get nodes"
        if self.admin is not None:
            return f"kubectl --kubeconfig {self.admin.kubeconfig} get nodes"
        return " ".join([*self.prefix, str(self.kubectl), "--kubeconfig", str(self.kubeconfig), "get", "nodes"])


@dataclass(frozen=True)
class AdminAccess:
    """What `up` set up on the admin machine for the user's own shell (provisioner/admin.py)."""

    kubeconfig: Path  # server reachable from the host: the loopback forwarder when the lab is isolated
    server: str
    context: str
    merged_into: Path | None  # the user's kubeconfig that holds the context, unless opted out
    kubectl_note: str  # where kubectl was linked, or the one line to add to PATH


def _collect_phases(bus: EventBus) -> list[PhaseFinished]:
    finished: list[PhaseFinished] = []

    def collect(event: Event) -> None:
        if isinstance(event, PhaseFinished):
            finished.append(event)

    bus.subscribe(collect)
    return finished


def up(
    cluster: Cluster,
    state: State,
    bus: EventBus,
    *,
    artifact_source: str | None = None,
    strategy: str | None = None,
    merge_kubeconfig: Path | Literal[False] | None = None,
    limit: Sequence[str] | None = None,
    rolling: bool = False,
    version_change: bool = False,
) -> UpResult:
    """Bring the cluster the spec describes into being, or converge an existing one.

    With `limit` (node names), only those machines are created and only they run the Ansible phases:
    how `scale` adds workers without touching the nodes that stay.

    `rolling`: the etcd, control-plane and worker plays run one host at a time, each waiting for its
    services to answer (`certs renew` on a running cluster). Not for a new cluster: its etcd members must
    start together.

    `version_change`: the spec's Kubernetes version may differ from the one the cluster last converged
    to (`provisioner upgrade` only, which drains each node before its `up`); otherwise that is refused.

    `merge_kubeconfig`: a path merges the cluster's context into that kubeconfig; False removes what
    an earlier `up` merged; None keeps an earlier merge where it is (refreshed) and adds none.
    """
    finished = _collect_phases(bus)
    state.ensure()
    if not version_change:
        _refuse_version_change(cluster, state)
    # Artifacts first: a build that cannot succeed should fail before any machine exists.
    aset = ensure_artifacts(cluster, bus, source=artifact_source)
    provider = providers.for_cluster(cluster, state, bus)
    # create() already read every machine's SSH details: asking Vagrant again costs seconds of Ruby
    hosts = provider.create([cluster.node(name) for name in limit] if limit else None)
    hosts_mod.save(state, hosts)
    prefix = provider.command_prefix()
    checked = [h for h in hosts if not limit or h.name in limit]
    with Phase(bus, "preflight", f"{len(checked)} host(s)"):
        preflight.check(checked, prefix)
    with Phase(bus, "certificates", str(state.pki_dir)) as phase:
        inventory.write(cluster, state, hosts, aset.root)
        made = pki.ensure(cluster, state)
        phase.progress(f"{len(made.issued)} issued, {len(made.reused)} reused")
        soon = certs.expiry_warning(state)
        if soon is not None:
            bus.emit(Warning(soon))
    run = converge(cluster, state, bus, provider, aset.root, strategy=strategy, limit=limit, rolling=rolling)
    with Phase(bus, "admin kubeconfig", str(state.kubeconfig)):
        _install_admin_kubeconfig(state)
        _wait_for_api(Kubectl(aset.bin / "kubectl", state.kubeconfig, prefix), cluster)
    with Phase(bus, "admin machine", "kubectl and the user's kubeconfig") as phase:
        access = _set_up_admin_machine(cluster, state, provider.lab_namespace(), aset.bin / "kubectl", merge_kubeconfig)
        phase.progress(f"{access.server}, context {access.context}")

    if not limit:
        state.version_file.write_text(cluster.spec.kubernetes.version + "\n")
    changed = {p.name: p.changed for p in run.phases}
    timings = [PhaseTiming(f.phase, f.seconds, changed.get(f.phase)) for f in finished]
    return UpResult(state.kubeconfig, prefix, aset.bin / "kubectl", run, timings, access)


def _refuse_version_change(cluster: Cluster, state: State) -> None:
    """Before anything is created: `up` with a new version would replace every node's binaries at once,
    masters together and workers undrained (Kubespray's cluster.yml does; its upgrade-cluster.yml is the
    safe way). Here the safe way is the only one `up` takes."""
    try:
        running = state.version_file.read_text().strip()
    except FileNotFoundError:
        return  # a new cluster, or one from before the record (its next `up` writes it)
    wanted = cluster.spec.kubernetes.version
    if running and running != wanted:
        raise ProvisionerError(
            "spec.kubernetes.version",
            f"is {wanted}, but the cluster runs {running} (its last `up`); `up` would replace every node's "
            "binaries at once, with no drain",
            f"run `provisioner upgrade` to move it node by node (a plan and preflight first), or put {running} back",
        )


def converge(
    cluster: Cluster,
    state: State,
    bus: EventBus,
    provider: Provider,
    artifacts_root: Path,
    *,
    strategy: str | None = None,
    limit: Sequence[str] | None = None,
    rolling: bool = False,
    check: bool = False,
    inventory_file: Path | None = None,
    server_log: Path | None = None,
) -> runner.RunResult:
    """site.yml on the inventory's hosts (`limit`: these only), with the artifact server running while it runs
    when the provider has one. `check`: Ansible's check mode (`provisioner plan`), against `inventory_file`."""
    server = provider.artifact_server_address()
    log = server_log or state.root / "artifact-server.log"
    prefix = provider.command_prefix()
    with serving(artifacts_root, server, log, prefix) if server else nullcontext() as url:
        return runner.run_playbook(
            state,
            bus,
            inventory=inventory_file,
            prefix=prefix,
            # The nodes fetch binaries and images from it (far faster than a push over SSH under emulation).
            extravars={
                **({"artifacts_url": url} if url else {}),
                **({ROLLING_VAR: 1} if rolling else {}),
            }
            or None,
            strategy_name=strategy,
            limit=",".join(limit) if limit else None,
            host_key_checking=isinstance(cluster.spec.provider, StaticProvider),
            check=check,
            name="plan" if check else "up",
            rerun="provisioner plan" if check else "provisioner up",
        )


def _set_up_admin_machine(
    cluster: Cluster, state: State, namespace: str | None, kubectl: Path, merge_into: Path | Literal[False] | None
) -> AdminAccess:
    """kubectl on PATH and a context that works from the user's shell: through the forwarder when the lab is
    isolated or there are several masters (so losing one does not cut the admin machine off)."""
    if namespace is not None or len(cluster.masters) > 1:
        targets = [f"{m.address}:{endpoints.APISERVER_PORT}" for m in cluster.masters]
        server = forwarder.ensure(state, targets, namespace).url
    else:
        forwarder.stop(state)
        server = endpoints.admin_apiserver(cluster)
    user_kubeconfig = admin.write_user_kubeconfig(state, cluster.name, server)
    if merge_into is False:
        admin.unmerge(state, cluster.name)  # opted out now: what an earlier `up` merged goes
        merged = None
    else:
        target = merge_into if merge_into is not None else admin.merged_path(state)
        merged = admin.merge(state, cluster.name, target).path if target is not None else None
    _link, note = admin.link_kubectl(kubectl)
    return AdminAccess(user_kubeconfig, server, cluster.name, merged, note)


def destroy(cluster: Cluster, state: State, bus: EventBus) -> None:
    """Remove the machines and everything that trusted them; run logs stay for reading.

    On the admin machine: the forwarder stops and the context `up` merged into the user's kubeconfig
    goes, which is left as it was before (the kubectl link stays: it is a tool, not the cluster's).
    """
    forwarder.stop(state)
    providers.for_cluster(cluster, state, bus).destroy()
    with Phase(bus, "forget cluster", str(state.root)) as phase:
        edited = admin.unmerge(state, cluster.name)
        if edited is not None:
            phase.progress(f"context {cluster.name} removed from {edited}")
        # A new cluster gets a new CA: nothing issued for the old one keeps working against it.
        shutil.rmtree(state.pki_dir, ignore_errors=True)
        state.kubeconfig.unlink(missing_ok=True)
        state.user_kubeconfig.unlink(missing_ok=True)
        state.known_hosts.unlink(missing_ok=True)
        state.hosts_file.unlink(missing_ok=True)
        state.version_file.unlink(missing_ok=True)


def reset(cluster: Cluster, state: State, bus: EventBus, *, strategy: str | None = None) -> runner.RunResult:
    """Remove from every node what `up` installed (services, binaries, configuration, cluster data).

    The machines stay, and so does the cluster's PKI on the admin machine: `up` afterwards builds a new
    cluster (empty etcd) on the same hosts. For static hosts this is the way back to a clean host.
    """
    state.ensure()
    provider = providers.for_cluster(cluster, state, bus)
    hosts = provider.hosts()
    hosts_mod.save(state, hosts)
    missing = sorted({n.name for n in cluster.spec.nodes} - {h.name for h in hosts})
    if missing:
        raise ProvisionerError(
            f"node {', '.join(missing)}",
            "is not running, so it cannot be reset",
            "start it (`provisioner up` creates missing lab machines) or remove it from the spec",
        )
    prefix = provider.command_prefix()
    with Phase(bus, "preflight", f"{len(hosts)} host(s)"):
        preflight.check(hosts, prefix)
    inventory.write(cluster, state, hosts, artifact_set(cluster).root)
    run = runner.run_playbook(
        state,
        bus,
        playbook=runner.PLAYBOOK_DIR / "reset.yml",
        prefix=prefix,
        strategy_name=strategy,
        host_key_checking=isinstance(cluster.spec.provider, StaticProvider),
        name="reset",
    )
    # The admin kubeconfig points at an apiserver that no longer exists; `up` writes it again. The nodes
    # run no version any more: the next `up` may build any.
    state.kubeconfig.unlink(missing_ok=True)
    state.version_file.unlink(missing_ok=True)
    return run


def _install_admin_kubeconfig(state: State) -> None:
    source = state.pki_dir / "kubeconfigs" / "admin.kubeconfig"
    data = source.read_bytes()
    target = state.kubeconfig
    if target.exists() and target.read_bytes() == data:
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    target.chmod(0o600)


def _wait_for_api(kubectl: Kubectl, cluster: Cluster) -> None:
    deadline = time.monotonic() + ADMIN_WAIT_SECONDS
    last = ""
    while time.monotonic() < deadline:
        try:
            done = kubectl.run("get", "nodes", "--no-headers", check=False, timeout=60)
        except KubectlError as exc:
            last = exc.message()
            continue
        if done.returncode == 0:
            return
        last = (done.stderr or done.stdout).strip()
        time.sleep(3)
    master = endpoints.admin_master(cluster)
    raise ClusterNotReady(
        f"apiserver {endpoints.admin_apiserver(cluster)}",
        f"does not answer `kubectl get nodes` from the admin machine within {ADMIN_WAIT_SECONDS} s: {last}",
        f"check the route to {master.address} (inside the lab namespace when isolated) and "
        f"`journalctl -u kube-apiserver` on {master.name}",
    )
