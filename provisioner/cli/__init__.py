"""The `provisioner` command. Each verb's code is one step away: a function here or provisioner/cli/<verb>.py."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from provisioner import hosts, providers, scaling, spec
from provisioner.certs import expiry_warning
from provisioner.cli import access, artifacts, box, cluster, drift, secrets, verify
from provisioner.cli import backup as backup_cli
from provisioner.cli import certs as certs_cli
from provisioner.cli import plan as plan_cli
from provisioner.cli import upgrade as upgrade_cli
from provisioner.cli.render import SpecOption, cli_bus, console, fail_cleanly, out, spec_path
from provisioner.errors import MachineError, ProvisionerError, SpecError
from provisioner.events import EventBus
from provisioner.state import State
from provisioner.versions import SUPPORTED

app = typer.Typer(
    name="provisioner",
    help="One YAML cluster spec to a verified Kubernetes cluster on Vagrant VMs or bare-metal hosts.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # tokens and keys must never reach a log
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"provisioner {importlib.metadata.version('provisioner')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """One YAML cluster spec to a verified Kubernetes cluster on Vagrant VMs or bare-metal hosts."""


def load_spec(path: Path | None) -> spec.Cluster:
    try:
        return spec.load(spec_path(path))
    except SpecError as exc:
        # Printed as text, not markup: a spec's values may look like markup ('[/]' would crash the print).
        console.print(f"[bold red]error:[/bold red] {escape(exc.message())}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


@app.command()
def validate(spec_file: SpecOption = None) -> None:
    """Check a cluster spec and print every problem with its field path.

    Supported Kubernetes versions are listed in provisioner/versions.py.
    """
    with fail_cleanly():
        path = spec_path(spec_file)
        cluster = load_spec(path)
        out.print(
            f"ok: {path}: cluster {cluster.name!r}, "
            f"{len(cluster.masters)} master(s), {len(cluster.workers)} worker(s), "
            f"Kubernetes {cluster.spec.kubernetes.version}, provider {cluster.spec.provider.type}",
            markup=False,  # the path is the user's: a folder named [old] must print as it is
        )


app.command("up")(cluster.up)
app.command("plan")(plan_cli.plan)
app.command("destroy")(cluster.destroy)
app.command("reset")(cluster.reset)
app.command("replace-master")(cluster.replace_master)
app.command("verify")(verify.verify)
app.command("drift")(drift.drift)
app.command("upgrade")(upgrade_cli.upgrade_cmd)
app.command("backup")(backup_cli.backup)
app.command("restore")(backup_cli.restore)
app.command("kubeconfig")(access.kubeconfig)
app.command(
    "kubectl",
    # Everything after provisioner's own options goes to kubectl untouched, its options included.
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False},
)(access.kubectl)
app.add_typer(artifacts.app, name="artifacts")
app.add_typer(box.app, name="box")
app.add_typer(secrets.app, name="secrets")
app.add_typer(certs_cli.app, name="certs")


@app.command()
def status(spec_file: SpecOption = None) -> None:
    """Each machine's state and address."""
    with fail_cleanly():
        cluster = load_spec(spec_file)
        provider = providers.for_cluster(cluster, State.for_cluster(cluster.name), EventBus())
        table = Table(title=f"cluster {cluster.name} ({cluster.spec.provider.type})", title_justify="left")
        for column in ("node", "role", "state", "address"):
            table.add_column(column)
        for machine in provider.status():
            style = "green" if machine.state in ("running", "reachable") else "yellow"
            table.add_row(machine.name, machine.role, f"[{style}]{machine.state}[/{style}]", machine.address)
        out.print(table)
        soon = expiry_warning(State.for_cluster(cluster.name))
        if soon is not None:
            console.print(f"warning: {soon}", markup=False)


@app.command()
def ssh(
    node: Annotated[str, typer.Argument(help="Node name from the spec.")],
    command: Annotated[list[str] | None, typer.Argument(help="Command to run instead of a shell.")] = None,
    spec_file: SpecOption = None,
) -> None:
    """Open a shell on a node (inside the lab's network namespace when the lab is isolated)."""
    with fail_cleanly():
        cluster = load_spec(spec_file)
        state = State.for_cluster(cluster.name)
        provider = providers.for_cluster(cluster, state, EventBus())
        known = {n.name for n in cluster.spec.nodes}
        if node not in known:
            raise MachineError(node, f"no such node in the spec (nodes: {', '.join(sorted(known))})", "")
        host = next((h for h in hosts.load(state) if h.name == node), None)
        if host is None:
            raise MachineError(node, "the machine has not been brought up", "run `provisioner up` first")
        options = hosts.ssh_options(
            state.known_hosts, strict=isinstance(cluster.spec.provider, spec.StaticProvider), persist="no"
        )
        argv = [*host.ssh_argv(options, provider.command_prefix()), *(command or [])]
        os.execvp(argv[0], argv)


@app.command()
def scale(
    workers: Annotated[int | None, typer.Option("--workers", help="Desired number of workers.", min=1)] = None,
    masters: Annotated[
        int | None, typer.Option("--masters", help="Desired number of masters: 3 or 5 (the control plane grows).")
    ] = None,
    spec_file: SpecOption = None,
) -> None:
    """Add or remove workers, or grow the control plane: writes the new node list into the spec file, then
    converges.

    New nodes get the next free names and addresses. New workers are the only nodes created and configured;
    removed workers (newest first) are cordoned, drained and deleted from the cluster, then destroyed. New
    masters join etcd one at a time, and every node is converged to the larger control plane.
    """
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        if workers is None and masters is None:
            raise ProvisionerError("scale", "nothing to scale", "give --workers N, --masters N or both")
        path = spec_path(spec_file)
        result = scaling.scale(path, workers, bus, masters=masters)
        renderer.summary()
        if result.plan.empty:
            wanted = [f"{n} {what}(s)" for n, what in ((masters, "master"), (workers, "worker")) if n is not None]
            out.print(f"{path}: already {' and '.join(wanted)}; no node added or removed")
        for name in result.plan.added:
            out.print(f"added {name}")
        for name in result.plan.removed:
            out.print(f"removed {name}")
        for host, counts in sorted(result.changed_per_host.items()):
            out.print(f"  {host}: {counts} changed task(s)")


@app.command("versions")
def versions_cmd() -> None:
    """List the supported Kubernetes versions and their pinned components."""
    for version, pins in SUPPORTED.items():
        out.print(f"{version}: " + ", ".join(f"{k}={v}" for k, v in vars(pins).items() if k != "kubernetes"))


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        console.print("output closed")
