"""`provisioner kubeconfig` and `provisioner kubectl`: the cluster from the user's shell or a script."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from provisioner import providers, spec
from provisioner.artifacts import artifact_set
from provisioner.cli.render import SpecOption, fail_cleanly, out, spec_path
from provisioner.errors import ProvisionerError
from provisioner.events import EventBus
from provisioner.state import State


def _not_up(cluster: spec.Cluster, path: Path) -> ProvisionerError:
    return ProvisionerError(f"cluster {cluster.name}", f"has no {path.name} yet ({path})", "run `provisioner up`")


def kubeconfig(
    spec_file: SpecOption = None,
    path: Annotated[bool, typer.Option("--path", help="Print the file's path instead of its content.")] = False,
    print_: Annotated[bool, typer.Option("--print", help="Print the kubeconfig (the default).")] = False,
) -> None:
    """The cluster's admin kubeconfig as your own shell reaches it (through the loopback forwarder of a lab)."""
    with fail_cleanly():
        if path and print_:
            raise ProvisionerError("--path and --print", "are each other's opposite", "pass one of them")
        cluster = spec.load(spec_path(spec_file))
        file = State.for_cluster(cluster.name).user_kubeconfig
        if not file.exists():
            raise _not_up(cluster, file)
        if path:
            out.print(str(file), markup=False)
        else:
            sys.stdout.write(file.read_text())


def kubectl(
    ctx: typer.Context,
    spec_file: SpecOption = None,
) -> None:
    """Run the cluster's own kubectl with its admin kubeconfig: `provisioner kubectl get nodes`.

    Everything after the options above goes to kubectl as it is (inside the lab's namespace when isolated).
    """
    with fail_cleanly():
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        if not state.kubeconfig.exists():
            raise _not_up(cluster, state.kubeconfig)
        binary = artifact_set(cluster).bin / "kubectl"
        if not binary.exists():
            raise ProvisionerError(str(binary), "is missing from the artifact set", "run `provisioner up`")
        prefix = providers.for_cluster(cluster, state, EventBus()).command_prefix()
        argv = [*prefix, str(binary), "--kubeconfig", str(state.kubeconfig), *ctx.args]
    sys.stdout.flush()
    os.execvp(argv[0], argv)
