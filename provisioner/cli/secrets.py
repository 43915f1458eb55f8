"""`provisioner secrets rotate-key`: the verb around provisioner.encryption's key rotation."""

from __future__ import annotations

import typer

from provisioner import encryption, spec
from provisioner.cli.render import SpecOption, YesOption, cli_bus, console, fail_cleanly, out, spec_path, steps_table
from provisioner.state import State

app = typer.Typer(
    help="The Secrets' encryption at rest in etcd.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # keys must never reach a log
)


@app.command("rotate-key")
def rotate_key(
    spec_file: SpecOption = None,
    yes: YesOption = False,
) -> None:
    """Encrypt every Secret with a new key and remove the old one (Kubernetes' "Rotating a decryption key").

    A new secretbox key goes first in the masters' encryption config, every Secret is written again with
    it, and the old key is removed once etcd holds no Secret under it. Each step is idempotent: after an
    interruption, run the command again and it resumes where it stopped.
    """
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = spec.load(spec_path(spec_file))
        state = State.for_cluster(cluster.name)
        planned = encryption.plan(state.pki_dir, [m.name for m in cluster.masters])
        remote = encryption.LiveCluster(cluster, state, bus)  # fails here, before asking, if there is no cluster
        if not yes and not typer.confirm(planned.question(cluster.name)):
            raise typer.Exit(1)
        result = encryption.rotate(planned, state.pki_dir, remote, bus)
    console.print(steps_table(f"cluster {cluster.name}: Secret encryption key rotated", result.steps))
    resumed = " (resumed)" if result.resumed else ""
    out.print(
        f"{result.old} -> {result.new}{resumed}: {result.rewritten} Secret(s) written again with {result.new}; "
        f"{result.old} is gone from every master's encryption config. "
        "`provisioner verify --only secrets-current-key` checks etcd again."
    )
