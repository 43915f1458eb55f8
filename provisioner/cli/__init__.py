"""The `provisioner` command. Each verb's code is one step away: a function here or provisioner/cli/<verb>.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provisioner import paths, spec
from provisioner.cli.render import console, fail_cleanly, out
from provisioner.errors import NotImplementedYet
from provisioner.versions import SUPPORTED

app = typer.Typer(
    name="provisioner",
    help="One YAML cluster spec to a verified Kubernetes cluster on Vagrant VMs or bare-metal hosts.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # tokens and keys must never reach a log
    add_completion=False,
)

SpecOption = Annotated[
    Path | None,
    typer.Option("--spec", "-s", help="Cluster spec file.", show_default="inventories/lab/cluster.yaml"),
]


def load_spec(path: Path | None) -> spec.Cluster:
    return spec.load(path or paths.default_spec())


def not_landed(verb: str, issue: int) -> None:
    raise NotImplementedYet(
        f"provisioner {verb}",
        f"this capability has not landed yet (issue {issue})",
        "nothing was changed",
    )


@app.command()
def validate(spec_file: SpecOption = None) -> None:
    """Check a cluster spec and print every problem with its field path.

    Supported Kubernetes versions are listed in provisioner/versions.py.
    """
    with fail_cleanly():
        cluster = load_spec(spec_file)
        out.print(
            f"ok: {spec_file or paths.default_spec()}: cluster {cluster.name!r}, "
            f"{len(cluster.masters)} master(s), {len(cluster.workers)} worker(s), "
            f"Kubernetes {cluster.spec.kubernetes.version}, provider {cluster.spec.provider.type}"
        )


@app.command()
def up(spec_file: SpecOption = None) -> None:
    """Create the machines, push the artifacts and converge the cluster (idempotent; re-run to resume)."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("up", 5)


@app.command()
def destroy(spec_file: SpecOption = None) -> None:
    """Remove everything `up` created (machines, networks, daemons, namespace, state). Caches stay."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("destroy", 4)


@app.command()
def status(spec_file: SpecOption = None) -> None:
    """Each machine's state and address."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("status", 4)


@app.command()
def ssh(
    node: Annotated[str, typer.Argument(help="Node name from the spec.")],
    spec_file: SpecOption = None,
) -> None:
    """Open a shell on a node (inside the lab's network namespace when the lab is isolated)."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("ssh", 4)


@app.command()
def scale(
    workers: Annotated[int, typer.Option("--workers", help="Desired number of workers.", min=1)],
    spec_file: SpecOption = None,
) -> None:
    """Add or remove workers; existing nodes are untouched, removed ones are drained first."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("scale", 7)


@app.command()
def verify(spec_file: SpecOption = None) -> None:
    """Prove the cluster's promises: host checks (testinfra) and behaviour through the API."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("verify", 6)


@app.command()
def drift(
    manifests: Annotated[Path, typer.Option("--manifests", help="Folder of YAML manifests.")],
    spec_file: SpecOption = None,
) -> None:
    """Report differences between manifests on disk and the live objects (exit 1 when any)."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("drift", 6)


@app.command()
def artifacts(spec_file: SpecOption = None) -> None:
    """Build or fetch every binary and image the cluster needs, into the cache."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("artifacts", 3)


@app.command()
def box(spec_file: SpecOption = None) -> None:
    """Build the offline Debian 12 Vagrant box with debootstrap."""
    with fail_cleanly():
        load_spec(spec_file)
        not_landed("box", 4)


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
