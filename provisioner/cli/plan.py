"""`provisioner plan`: the verb around provisioner.plan; prints per host what `up` would change.

Exit status: 0 when nothing would change, 2 when something would, 1 on any error (a bad spec included, whose
own status elsewhere is 2).
"""

from __future__ import annotations

import typer

from provisioner import plan as plan_mod
from provisioner import spec
from provisioner.cli.render import SourceOption, SpecOption, StrategyOption, cli_bus, fail_cleanly, out, spec_path
from provisioner.runner import TaskChange
from provisioner.state import State

CHANGES_EXIT = 2


def plan(spec_file: SpecOption = None, source: SourceOption = None, strategy: StrategyOption = None) -> None:
    """Show what `up` would change on each host (binaries, files with their diffs, certificates, services that
    restart) and change nothing. Exit 0 when nothing would change, 2 when something would, 1 on errors."""
    bus, renderer = cli_bus(check=True)
    with fail_cleanly(renderer, exit_code=1):
        cluster = spec.load(spec_path(spec_file))
        result = plan_mod.plan(cluster, State.for_cluster(cluster.name), bus, artifact_source=source, strategy=strategy)
    renderer.summary("plan")
    for line in render(result):
        out.print(line, markup=False, highlight=False)
    if not result.empty:
        raise typer.Exit(CHANGES_EXIT)


def render(result: plan_mod.Plan) -> list[str]:
    """The plan as lines of text: per host its changes, then a summary."""
    lines = [f"plan for cluster {result.cluster} (Kubernetes {result.kubernetes_version}):"]
    if result.version_change:
        lines.append(
            f"the cluster runs {result.running_version}: `up` refuses a version change; `provisioner upgrade` "
            "makes these changes node by node, each worker drained first"
        )
    if result.issued:
        lines.append(f"admin machine: would issue {', '.join(result.issued)}")
    for host in result.hosts:
        if not host.changes:
            lines.append(f"{host.name}: nothing would change")
            continue
        lines.append(f"{host.name}: {len(host.changes)} task(s) would change")
        lines += [f"  {line}" for change in host.changes for line in _change(change)]
        lines += [
            f"  {'replaces' if b.old else 'installs'} {b.path}: {b.component} {b.versions}" for b in host.binaries
        ]
        lines += [f"  new service {unit}: `up` installs, starts and enables it" for unit in host.new_services]
        if host.restarts:
            lines.append(f"  would run: {', '.join(host.restarts)}")
    new = (
        "no machine yet; would be created and provisioned from nothing"
        if result.creates_machines
        else "not provisioned by `up` yet; would be provisioned from nothing"
    )
    lines += [f"{name}: {new}" for name in result.provisioned]
    lines += [f"{name}: not in the spec; `up` leaves it alone" for name in result.unlisted]
    lines.append(_summary(result))
    return lines


def _change(change: TaskChange) -> list[str]:
    what = f"{change.phase}: {change.task}"
    if change.handler:
        what += " (handler)"
    if change.items:
        what += f": {', '.join(change.items)}"
    lines = [what]
    for diff in change.diffs:
        # A unified diff names its file in its header; attribute changes ("mode: 0644 -> 0600") do not.
        named = "" if diff.text.startswith("---") else f"{diff.path}: "
        lines += [f"  {named}{line}" for line in diff.text.splitlines()]
    return lines


def _summary(result: plan_mod.Plan) -> str:
    if result.empty:
        return f"nothing would change: `up` would report 0 changed tasks on {len(result.hosts)} host(s)"
    changed = [h for h in result.hosts if h.changes]
    restarts = sum(len(h.restarts) for h in result.hosts)
    parts = [
        f"{len(changed)} of {len(result.hosts)} host(s) would change",
        f"{result.changes} task(s), {restarts} of them handlers (restarts)",
    ]
    if result.provisioned:
        parts.append(f"{len(result.provisioned)} node(s) provisioned from nothing")
    if result.issued:
        parts.append(f"{len(result.issued)} PKI file(s) issued")
    return "summary: " + "; ".join(parts)
