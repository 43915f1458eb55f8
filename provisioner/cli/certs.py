"""`provisioner certs`: the table of every certificate the cluster uses, as installed (provisioner/certs.py),
and `provisioner certs renew` (provisioner/renewal.py)."""

from __future__ import annotations

import datetime
from typing import Annotated

import typer
from rich.table import Table

from provisioner import certs as core
from provisioner import providers, renewal, spec
from provisioner.cli.render import SpecOption, cli_bus, console, fail_cleanly, out, spec_path
from provisioner.state import State

app = typer.Typer(
    help="Every certificate the cluster uses, as installed, and their renewal.",
    invoke_without_command=True,
    pretty_exceptions_show_locals=False,  # keys must never reach a log
)


@app.callback()
def certs(
    ctx: typer.Context,
    spec_file: SpecOption = None,
    warn_days: Annotated[
        float | None,
        typer.Option(
            "--warn-days",
            help="Exit 1 when any certificate has fewer days left than this (default: spec.pki.renewBefore).",
            min=0,
        ),
    ] = None,
) -> None:
    """Every certificate on the admin machine and, read over SSH, on every node: the PKI directory's, the
    client certificates inside the kubeconfigs and the one a kubelet renewed itself, CAs included; subject,
    issuer, SANs, not-after, time left.

    Exit 1 when any has fewer than --warn-days days left (or has expired), 2 when a node or file cannot be read.
    `provisioner certs renew` issues new ones.
    """
    if ctx.invoked_subcommand is not None:
        return
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        ssh = providers.node_ssh(cluster, state, bus)
        found = core.everywhere(state, ssh, [n.name for n in cluster.spec.nodes])
    if warn_days is None:
        warn_days = cluster.spec.pki.margin.total_seconds() / 86400
    now = datetime.datetime.now(datetime.UTC)
    threshold = core.describe_left(datetime.timedelta(days=warn_days))  # "30 d", or the spec's "30 min"
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
            f"{len(due)} of {certificates} certificates have fewer than {threshold} left; "
            "`provisioner certs renew --all` issues new ones (`up` does for what is within spec.pki.renewBefore "
            "of its end)",
            markup=False,
        )
    if unreadable:
        out.print(f"{len(unreadable)} could not be read: " + "; ".join(f"{u.where} {u.file}" for u in unreadable))
        raise typer.Exit(2)
    if due:
        raise typer.Exit(1)
    out.print(f"{certificates} certificates, none with fewer than {threshold} left", markup=False)


@app.command("renew")
def renew(
    names: Annotated[
        list[str] | None, typer.Argument(help="Certificates to renew, by file stem as `provisioner certs` shows them.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Renew every leaf certificate.")] = False,
    spec_file: SpecOption = None,
) -> None:
    """New leaf certificates from the same CAs (new keys, the same names, a full spec.pki.leafValidity),
    installed on the nodes and the admin machine; the services that read them restart one host at a time,
    each answering again before the next (with three masters the API stays up).

    A cluster whose certificates have already expired is brought back the same way, all at once. Afterwards
    every installed copy is checked to be the new one. Interrupted, run it again: it continues.
    """
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        chosen = renewal.choose(cluster, names or [], everything)  # refused here: nothing has changed
        ssh = providers.node_ssh(cluster, state, bus)
        now = datetime.datetime.now(datetime.UTC)
        found = core.from_nodes(ssh, [n.name for n in cluster.spec.nodes])
        planned = renewal.plan(cluster, state, chosen, found, now)
        console.print(f"renewing {planned.describe()}", markup=False)
        result = renewal.renew(cluster, state, bus, planned)
        renderer.summary()
    table = Table(title=f"cluster {cluster.name}: certificates renewed", title_justify="left")
    for column in ("certificate", "not after before (UTC)", "not after now (UTC)"):
        table.add_column(column)
    for item in result.renewed:
        table.add_row(
            item.name,
            item.before.strftime("%Y-%m-%d %H:%M") if item.before else "-",
            item.after.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)
    out.print(
        f"{len(result.renewed)} renewed in {result.seconds:.0f}s "
        f"({'one host at a time' if planned.rolling else 'all at once'}); every installed copy is the new one. "
        "`provisioner certs` shows them as installed.",
        markup=False,
    )
