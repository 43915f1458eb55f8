"""`provisioner backup [--list]` and `provisioner restore SNAPSHOT`: the verbs around provisioner.backup."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from provisioner import backup as core
from provisioner import spec
from provisioner.artifacts import artifact_set
from provisioner.cli.render import SpecOption, YesOption, cli_bus, console, fail_cleanly, out, spec_path, steps_table
from provisioner.errors import ProvisionerError
from provisioner.state import State


def backup(
    spec_file: SpecOption = None,
    list_: Annotated[bool, typer.Option("--list", "-l", help="List the backups instead of taking one.")] = False,
) -> None:
    """Take an etcd snapshot from a healthy master into the cluster's state directory (backups/).

    The snapshot comes with a sidecar .json: cluster, time, sha256, size, etcd version, members, revision.
    Both are readable by the user only. `--list` shows them, with whether each file still matches its checksum.
    """
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        if list_:
            _print_list(cluster.name, state.backups_dir)
            return
        etcdutl = artifact_set(cluster).bin / "etcdutl"
        remote = core.LiveCluster(cluster, state, bus)
        taken = core.take(cluster.name, [m.name for m in cluster.masters], remote, state.backups_dir, etcdutl, bus)
    side = taken.sidecar
    out.print(
        f"{side.name}: cluster {side.cluster}'s etcd at revision {side.revision} ({side.total_keys} keys, "
        f"{side.size} bytes, etcd {side.etcd_version}) from {side.taken_from} in {taken.seconds:.1f}s\n"
        f"  {taken.path}\n  sha256 {side.sha256}\n"
        f"Restore it with `provisioner restore {side.name}`.",
        markup=False,
    )


def _print_list(cluster: str, backups: Path) -> None:
    listed = core.list_backups(backups)
    if not listed:
        out.print(f"no backups of cluster {cluster} in {backups}; take one with `provisioner backup`", markup=False)
        return
    table = Table(title=f"cluster {cluster}: backups in {backups}", title_justify="left")
    for column in ("name", "taken (UTC)", "size", "revision", "checksum"):
        table.add_column(column, justify="right" if column in ("size", "revision") else "left")
    for item in listed:
        side = item.sidecar
        style = "green" if item.checksum == "ok" else "bold red"
        table.add_row(
            item.name,
            side.taken_at if side else "?",
            str(item.size),
            str(side.revision) if side else "?",
            f"[{style}]{item.checksum}[/{style}]",
        )
    out.print(table)


def restore(
    snapshot: Annotated[str, typer.Argument(help="A backup's name from `provisioner backup --list`, or a file.")],
    spec_file: SpecOption = None,
    yes: YesOption = False,
) -> None:
    """Put the cluster back to a backup: stop the control plane, restore every etcd member, start it again.

    Checked before anything changes: the file, its sidecar (it must name this cluster), its sha256, and that
    etcdutl reads it as a snapshot. Each master's data dir is moved aside, never deleted. If the restore stops
    part-way, run the same command again: it keeps what is already restored and continues.
    """
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        if not yes and not sys.stdin.isatty():
            raise ProvisionerError(
                "provisioner restore",
                "asks for confirmation, and its input is not a terminal; nothing was checked or changed",
                "run it with --yes to restore without asking",
            )
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        etcdutl = artifact_set(cluster).bin / "etcdutl"
        checked = core.validate(snapshot, cluster.name, state.backups_dir, etcdutl)
        planned = core.plan(checked, cluster, state.backups_dir)
        remote = core.LiveCluster(cluster, state, bus)
        core.preflight(planned, remote)
        if not yes and not typer.confirm(planned.question()):
            raise typer.Exit(1)
        result = core.restore(planned, remote, bus, state.backups_dir)
    console.print(steps_table(f"cluster {cluster.name}: etcd restored from {result.snapshot}", result.steps))
    for master, where in sorted(result.set_aside.items()):
        out.print(f"{master}: the data dir from before is kept in {where}", markup=False)
    for master in result.kept:
        out.print(f"{master}: kept the member an earlier run had restored", markup=False)
    out.print(
        f"etcd serves revision {result.revision}. Check the cluster with `provisioner verify`; remove the kept "
        "data dirs by hand once it is as it should be.",
        markup=False,
    )
