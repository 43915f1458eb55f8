"""`provisioner up` and `provisioner destroy`: the verbs around provisioner.lifecycle.

The lead registers them on the top-level app: `app.command("up")(cluster.up)`, same for destroy.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from provisioner import admin, lifecycle, replace, spec
from provisioner.cli.render import (
    SourceOption,
    SpecOption,
    StrategyOption,
    YesOption,
    cli_bus,
    console,
    fail_cleanly,
    out,
    spec_path,
)
from provisioner.state import State

MergeOption = Annotated[
    bool,
    typer.Option(
        "--merge-kubeconfig/--no-merge-kubeconfig",
        help="Add the cluster as context <cluster> to ~/.kube/config (or $KUBECONFIG's first file); "
        "destroy removes it again.",
    ),
]


def up(
    spec_file: SpecOption = None,
    source: SourceOption = None,
    strategy: StrategyOption = None,
    merge_kubeconfig: MergeOption = True,
) -> None:
    """Create the machines, push the artifacts and converge the cluster (idempotent; re-run to resume)."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        result = lifecycle.up(
            cluster,
            state,
            bus,
            artifact_source=source,
            strategy=strategy,
            merge_kubeconfig=admin.default_target() if merge_kubeconfig else False,
        )
    table = Table(title=f"cluster {cluster.name} is up", title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("changed", justify="right")
    for phase in result.phases:
        table.add_row(phase.name, f"{phase.seconds:.1f}", "" if phase.changed is None else str(phase.changed))
    console.print(table)
    console.print(f"Ansible: {result.changed} changed task(s), strategy {result.run.strategy}")
    console.print(f"run log: {result.run.stdout}")
    access = result.admin
    if access is not None:
        console.print(f"kubeconfig: {access.kubeconfig} (server {access.server})", markup=False)
        if access.merged_into is not None:
            console.print(f"context {access.context} is in {access.merged_into}", markup=False)
        console.print(access.kubectl_note, markup=False)
    out.print(f"reach the cluster with:\n  {result.kubectl_hint()}", markup=False)


def destroy(
    spec_file: SpecOption = None,
    yes: YesOption = False,
) -> None:
    """Remove the machines, the cluster's PKI and kubeconfigs and its context in yours; caches and logs stay."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        what = "its machines" if isinstance(cluster.spec.provider, spec.VagrantProvider) else "nothing on its hosts"
        if not yes and not typer.confirm(f"destroy cluster {cluster.name}: {what}, its PKI and kubeconfig?"):
            raise typer.Exit(1)
        lifecycle.destroy(cluster, State.for_cluster(cluster.name), bus)
    renderer.summary()


def reset(
    spec_file: SpecOption = None,
    yes: YesOption = False,
) -> None:
    """Remove from every node what `up` installed; the machines and the cluster's PKI stay."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        names = ", ".join(n.name for n in cluster.spec.nodes)
        if not yes and not typer.confirm(f"reset {names}: stop and remove Kubernetes, etcd and containerd?"):
            raise typer.Exit(1)
        run = lifecycle.reset(cluster, State.for_cluster(cluster.name), bus)
    renderer.summary()
    per_host = ", ".join(f"{host} {stats.changed} changed" for host, stats in sorted(run.hosts.items()))
    out.print(f"reset {cluster.name}: {per_host}; the machines stay, `provisioner up` builds the cluster again")


def replace_master(
    name: Annotated[str, typer.Argument(help="The master to replace (its machine is destroyed and made anew).")],
    spec_file: SpecOption = None,
    yes: YesOption = False,
) -> None:
    """Replace a lost master: its etcd member removed, a new machine with fresh certificates joined."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        replace.preflight(cluster, name)
        what = (
            "its VM is destroyed and made anew"
            if isinstance(cluster.spec.provider, spec.VagrantProvider)
            else ("its host must already be reinstalled")
        )
        if not yes and not typer.confirm(
            f"replace master {name} of {cluster.name}: its etcd member is removed, {what}?"
        ):
            raise typer.Exit(1)
        result = replace.replace_master(cluster, State.for_cluster(cluster.name), bus, name)
    renderer.summary()
    removed = ", ".join(m.id for m in result.removed) or "none listed"
    members = ", ".join(f"{m.name} ({m.id})" for m in result.members_after)
    out.print(f"{name} replaced in {result.seconds:.0f} s: old member {removed}; etcd members now {members}")
