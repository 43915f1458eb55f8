"""`provisioner box build|path`: the offline Debian 12 lab box."""

from __future__ import annotations

from typing import Annotated

import typer

from provisioner import box
from provisioner.cli.render import cli_bus, fail_cleanly, out
from provisioner.errors import ArtifactError

app = typer.Typer(help="The Debian 12 libvirt Vagrant box the lab VMs boot.", no_args_is_help=True)


@app.command()
def build(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the cached box matches the recipe.")] = False,
    mirror: Annotated[
        str | None,
        typer.Option("--mirror", help="Debian mirror URL (default: $PROVISIONER_DEBIAN_MIRROR or deb.debian.org)."),
    ] = None,
) -> None:
    """Build the box with debootstrap, or reuse the cached one if its recipe is unchanged."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        built = box.build(bus, mirror=mirror, force=force)
    out.print(str(built.path))


@app.command()
def path() -> None:
    """Print the cached box file for the current recipe (fails if it has not been built)."""
    with fail_cleanly():
        found = box.cached()
        if found is None:
            raise ArtifactError(
                f"box {box.BOX_NAME}",
                f"not built for the current recipe ({box.RECIPE.digest()})",
                "run `provisioner box build`",
            )
    out.print(str(found.path))
