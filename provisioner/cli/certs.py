"""`provisioner certs`: the table of every certificate the cluster uses, as installed (provisioner/certs.py)."""

from __future__ import annotations

import datetime
from typing import Annotated

import typer
from rich.table import Table

from provisioner import certs as core
from provisioner import providers, spec
from provisioner.cli.render import SpecOption, cli_bus, fail_cleanly, out, spec_path
from provisioner.state import State


def certs(
    spec_file: SpecOption = None,
    warn_days: Annotated[
        float,
        typer.Option("--warn-days", help="Exit 1 when any certificate has fewer days left than this.", min=0),
    ] = core.MIN_DAYS_LEFT,
) -> None:
    """Every certificate on the admin machine and, read over SSH, on every node: the PKI directory's and
    the client certificates inside the kubeconfigs, CAs included; subject, issuer, SANs, not-after, time left.

    Exit 1 when any has fewer than --warn-days days left (or has expired), 2 when a node or file cannot be read.
    """
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        ssh = providers.node_ssh(cluster, state, bus)
        found = core.admin_files(state) + core.from_nodes(ssh, [n.name for n in cluster.spec.nodes])
    now = datetime.datetime.now(datetime.UTC)
    table = Table(title=f"cluster {cluster.name}: certificates as installed", title_justify="left")
    for column in ("where", "file", "subject", "issuer", "SANs", "not after (UTC)", "days left", "left"):
        table.add_column(column, justify="right" if column == "days left" else "left", overflow="fold")
    unreadable = []
    for item in sorted(found, key=core.sort_key):
        if isinstance(item, core.Unreadable):
            unreadable.append(item)
            table.add_row(item.where, item.file, f"[bold red]unreadable: {item.cause}[/]", "", "", "", "", "")
            continue
        cert = item.cert
        days = cert.days_left(now)
        style = "bold red" if days < warn_days else ("yellow" if days < core.WARN_DAYS else "")
        table.add_row(
            item.where,
            item.file,
            cert.name + (" [CA]" if cert.is_ca else ""),
            cert.issuer,
            ", ".join(cert.sans),
            cert.not_after.strftime("%Y-%m-%d %H:%M"),
            f"[{style}]{days:.1f}[/]" if style else f"{days:.1f}",
            core.describe_left(cert.left(now)),
        )
    out.print(table)
    due = core.below(found, warn_days, now)
    certificates = sum(isinstance(f, core.Found) for f in found)
    if due:
        out.print(
            f"{len(due)} of {certificates} certificates have fewer than {warn_days:g} days left; "
            "`provisioner up` issues new ones for what is within spec.pki.renewBefore of its end",
            markup=False,
        )
    if unreadable:
        out.print(f"{len(unreadable)} could not be read: " + "; ".join(f"{u.where} {u.file}" for u in unreadable))
        raise typer.Exit(2)
    if due:
        raise typer.Exit(1)
    out.print(f"{certificates} certificates, none with fewer than {warn_days:g} days left", markup=False)
