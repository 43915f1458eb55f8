"""`provisioner drift --manifests DIR`: YAML files vs live objects; exit 0 none, 1 some, 2 on error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from provisioner import artifacts, spec
from provisioner.cli.render import SpecOption, console, out, spec_path
from provisioner.drift import drift as find_drift
from provisioner.drift import load_manifests
from provisioner.errors import ProvisionerError, ToolMissing
from provisioner.events import EventBus
from provisioner.kube import Kubectl
from provisioner.providers import for_cluster
from provisioner.state import State

app = typer.Typer(
    help="Report differences between manifests on disk and the live objects.",
    pretty_exceptions_show_locals=False,
)


@app.callback(invoke_without_command=True)
def drift(
    manifests: Annotated[Path, typer.Option("--manifests", help="Folder of YAML manifests (searched recursively).")],
    spec_file: SpecOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
) -> None:
    """Exit 0 when every object matches its file, 1 when anything drifted or is missing, 2 on an error."""
    try:
        load_manifests(manifests)  # a bad folder is reported before anything talks to the cluster
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        kubectl_bin = artifacts.artifact_set(cluster).bin / "kubectl"
        if not kubectl_bin.is_file():
            raise ToolMissing(str(kubectl_bin), "kubectl of the artifact set is missing", "run `provisioner artifacts`")
        prefix = for_cluster(cluster, state, EventBus()).command_prefix()
        differences = find_drift(manifests, Kubectl(kubectl_bin, state.kubeconfig, prefix))
    except ProvisionerError as exc:
        # Any error is exit 2, so scripts can tell "could not compare" from "drifted".
        console.print(f"[bold red]error:[/bold red] {escape(exc.message())}")
        raise typer.Exit(2) from None
    except Exception:
        # A bug keeps its traceback but exits 2 too: Python's 1 would tell a script the cluster drifted.
        console.print_exception(show_locals=False)
        raise typer.Exit(2) from None
    if as_json:
        out.print_json(json.dumps([d.to_dict() for d in differences]))
    elif not differences:
        out.print(f"no drift: every object in {manifests} matches the cluster")
    else:
        for d in differences:
            out.print(d.line(), markup=False)
        objects = len({d.object for d in differences})
        out.print(f"{len(differences)} difference(s) in {objects} object(s)")
    raise typer.Exit(1 if differences else 0)
