"""`provisioner upgrade`: the verb around provisioner.upgrade (preflight, lock, masters, workers, summary)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from provisioner import spec, spec_edit, upgrade
from provisioner.cli.render import SpecOption, YesOption, cli_bus, console, fail_cleanly, out, spec_path
from provisioner.state import State


def upgrade_cmd(
    to: Annotated[
        str | None, typer.Option("--to", help="Target version (written into the spec once the preflight passes).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Workers upgraded at once.", min=1)] = 1,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="Seconds a worker's drain may take.", min=1)
    ] = upgrade.DRAIN_TIMEOUT,
    spec_file: SpecOption = None,
    yes: YesOption = False,
) -> None:
    """Upgrade the cluster to spec.kubernetes.version (or --to), one minor version at a time: the masters
    one at a time, then the workers (cordoned, drained, upgraded, uncordoned) --batch at a time.

    A preflight refuses a downgrade, a skipped minor version, an unhealthy etcd or a worker not Ready before
    anything changes, and names the PodDisruptionBudgets that will stop a drain. Interrupted, run it again:
    it continues from the first node not at the target.
    """
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        path = spec_path(spec_file)
        current = spec.load(path)
        cluster = upgrade.target_cluster(current, to)
        state = State.for_cluster(cluster.name)
        planned = upgrade.prepare(cluster, state, bus, batch)
        if planned.empty:
            out.print(f"cluster {cluster.name}: every node runs {planned.target}; nothing to upgrade")
            return
        workers = [w for b in planned.workers for w in b]
        question = (
            f"upgrade cluster {cluster.name} from {', '.join(planned.running)} to {planned.target}: "
            f"masters {', '.join(planned.masters) or 'none'}, then workers {', '.join(workers) or 'none'} "
            f"{batch} at a time?"
        )
        if not yes and not typer.confirm(question):
            raise typer.Exit(1)
        if to is not None and spec_edit.set_version(path, to):
            console.print(f"{path}: spec.kubernetes.version is now {to}", markup=False)
        result = upgrade.run(cluster, state, bus, planned, drain_timeout=drain_timeout)
        renderer.summary()
    table = Table(title=f"cluster {cluster.name}: upgraded to {planned.target}", title_justify="left")
    for column in ("node", "role", "drain s", "converge s", "ready s", "total s"):
        table.add_column(column, justify="left" if column in ("node", "role") else "right")
    for node in result.nodes:
        table.add_row(
            node.name, node.role, f"{node.drain:.0f}", f"{node.converge:.0f}", f"{node.ready:.0f}", f"{node.total:.0f}"
        )
    out.print(table)
    out.print(
        f"{len(result.nodes)} node(s) upgraded in {result.seconds:.0f}s; the last `up` over the whole cluster "
        f"changed {result.final_changed} task(s). `provisioner verify` checks the result.",
        markup=False,
    )
