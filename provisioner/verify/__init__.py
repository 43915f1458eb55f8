"""`provisioner verify`: prove the seed's promises on a running cluster.

Host checks run as testinfra modules (provisioner/verify/hosts/) over SSH; cluster checks run through
the API with kubectl (provisioner/verify/clusterchecks.py lists them in order). Both become rows of one
:class:`VerifyReport`, which is also written as JSON under ``State.root / "reports"``.
"""

from __future__ import annotations

import datetime
import fnmatch
import time
from collections.abc import Sequence

from provisioner import artifacts, forwarder
from provisioner.certs import expiry_warning
from provisioner.errors import ProvisionerError, ToolMissing
from provisioner.events import EventBus, PhaseFinished, PhaseStarted, Progress, Warning
from provisioner.hosts import load as load_hosts
from provisioner.hosts import ssh_options
from provisioner.kube import Kubectl
from provisioner.providers import for_cluster
from provisioner.spec import Cluster, StaticProvider
from provisioner.state import State
from provisioner.verify import cluster as cluster_rows
from provisioner.verify import clusterchecks, ha, hostchecks, security
from provisioner.verify.kube import CheckFailed, Ssh
from provisioner.verify.lab import ClusterCheck, Lab, Skip
from provisioner.verify.report import FAILED, PASSED, SKIPPED, CheckResult, VerifyReport

__all__ = ["CheckResult", "VerifyReport", "check_ids", "run", "selected"]

# Names that select several checks at once with --only.
ALIASES = {
    "hosts": list(hostchecks.MODULES),
    # The API rows only: self-healing and ha are groups of their own (they take nodes down).
    "cluster": [c.id for c in cluster_rows.GROUP],
    "security": [c.id for c in security.GROUP],
    "self-healing": ["pod-replaced", "container-restarted", "kill-*", "worker-shutdown"],
    "etcd": ["etcd-*"],
    "ha": [c.id for c in ha.GROUP],
}


# Checks that take the control plane or a worker down for a while.
DISRUPTIVE = {c.id for c in clusterchecks.CHECKS if c.id.startswith("kill-") or c.id == "worker-shutdown"} | {
    c.id for c in ha.GROUP
}


def check_ids() -> list[str]:
    """Every selectable check, in the order verify runs them."""
    return [*hostchecks.MODULES, *(c.id for c in clusterchecks.CHECKS)]


def selected(select: Sequence[str] | None) -> list[str]:
    """The check ids a selection names (exact ids, shell-style patterns such as kill-*, or aliases)."""
    if not select:
        return check_ids()
    patterns: list[str] = []
    for item in select:
        patterns += ALIASES.get(item, [item])
    chosen = [c for c in check_ids() if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(c, p) for c in check_ids())]
    if unknown:
        raise ProvisionerError(
            f"--only {' '.join(unknown)}",
            "names no check",
            f"use one of {', '.join(check_ids())} or {', '.join(ALIASES)} (patterns like kill-* work)",
        )
    return chosen


def run(cluster: Cluster, state: State, bus: EventBus, select: Sequence[str] | None = None) -> VerifyReport:
    """Run the selected checks (default: all) and return the report; the JSON file is already written."""
    chosen = selected(select)
    if not state.inventory_file.is_file() or not state.hosts_file.is_file() or not state.kubeconfig.is_file():
        raise ProvisionerError(
            f"cluster {cluster.name}",
            f"has no generated inventory, host list or admin kubeconfig under {state.root}",
            "bring it up first with `provisioner up`",
        )
    soon = expiry_warning(state)
    if soon is not None:
        bus.emit(Warning(soon))
    provider = for_cluster(cluster, state, bus)
    prefix = provider.command_prefix()
    kubectl_bin = artifacts.artifact_set(cluster).bin / "kubectl"
    if not kubectl_bin.is_file():
        raise ToolMissing(str(kubectl_bin), "kubectl of the artifact set is missing", "run `provisioner artifacts`")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = state.root / "reports" / f"verify-{stamp}"
    # Short keep-alives: the shutdown check powers a node off under an open connection.
    options = ssh_options(
        state.known_hosts,
        strict=isinstance(cluster.spec.provider, StaticProvider),
        control_dir=state.ssh_control_dir,
        persist="120s",
        keepalive=5,
    )
    nodes = {h.name: h for h in load_hosts(state)}
    report = VerifyReport(cluster.name)

    host_groups = [g for g in hostchecks.MODULES if g in chosen]
    if host_groups:
        started = time.monotonic()
        bus.emit(PhaseStarted("verify hosts", ", ".join(host_groups)))
        sudo = any(n.ssh_user != "root" for n in nodes.values())
        rows = hostchecks.run(cluster, state, prefix, options, run_dir, host_groups, sudo=sudo)
        for row in rows:
            if row.result == FAILED:
                bus.emit(Progress("verify hosts", f"FAILED {row.check}: {row.detail}"))
        report.results += rows
        report.files.append(str(run_dir / "hosts-junit.xml"))
        bus.emit(PhaseFinished("verify hosts", time.monotonic() - started, ok=all(r.ok for r in rows)))

    lab = Lab(
        cluster=cluster,
        kubectl=Kubectl(kubectl_bin, state.kubeconfig, prefix),
        ssh=Ssh(nodes, prefix, options),
        prefix=prefix,
        agnhost_image=artifacts.image_names(cluster.spec.kubernetes.version)["agnhost"],
        provider=provider,
        admin=Kubectl(kubectl_bin, state.user_kubeconfig) if forwarder.running(state) else None,
    )
    for check in clusterchecks.CHECKS:
        if check.id in chosen:
            if check.id in DISRUPTIVE and lab.deleting:
                # Kills and a shutdown start from a settled cluster: the namespaces of the checks before
                # them are deleted first, so their teardown is neither slowed nor blamed on the kill.
                report.results.append(_run_check(lab, clusterchecks.CLEANUP, bus))
            report.results.append(_run_check(lab, check, bus))
            report.write_json(run_dir / "report.json")  # a partial report survives an interrupted run
    if lab.deleting:
        report.results.append(_run_check(lab, clusterchecks.CLEANUP, bus))

    report.files.insert(0, str(report.write_json(run_dir / "report.json")))
    return report


def _run_check(lab: Lab, check: ClusterCheck, bus: EventBus) -> CheckResult:
    phase = f"verify {check.id}"
    bus.emit(PhaseStarted(phase, check.expectation))
    lab.progress = lambda message: bus.emit(Progress(phase, message))
    lab.cleanup_problems = []
    started = time.monotonic()
    try:
        detail, result = check.run(lab), PASSED
    except Skip as exc:
        detail, result = str(exc), SKIPPED
    except CheckFailed as exc:
        detail, result = str(exc), FAILED
    except ProvisionerError as exc:
        # An API call or SSH command failing outright is a broken promise of this check, not a crash of verify.
        message = exc.message()
        detail, result = (message if len(message) <= 600 else message[:599] + "…"), FAILED
    if lab.cleanup_problems:
        detail = f"{detail}; cleanup: {'; '.join(lab.cleanup_problems)}"
        result = FAILED
    seconds = time.monotonic() - started
    bus.emit(PhaseFinished(phase, seconds, ok=result != FAILED, detail=detail))
    return CheckResult(check.id, check.expectation, result, seconds, detail, group=check.id)
