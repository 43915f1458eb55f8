"""`provisioner artifacts build|fetch|verify|path|mirror`: the binaries and images a cluster runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from provisioner import artifacts, spec
from provisioner.artifacts import build as build_mod
from provisioner.artifacts import fetch as fetch_mod
from provisioner.artifacts import mirror as mirror_mod
from provisioner.cli.render import SpecOption, cli_bus, fail_cleanly, out, spec_path
from provisioner.errors import ArtifactError

app = typer.Typer(
    help="Binaries and images for the spec's Kubernetes version: build from Go modules, or fetch releases.",
    no_args_is_help=True,
)

CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Directory holding one set per Kubernetes version.",
        show_default="spec.artifacts.cacheDir, else $XDG_CACHE_HOME/provisioner/artifacts",
    ),
]


def _load(spec_file: Path | None) -> spec.Cluster:
    return spec.load(spec_path(spec_file))


@app.command()
def build(spec_file: SpecOption = None, cache_dir: CacheOption = None) -> None:
    """Build every missing or altered file from source (Go module proxy, gcc); a complete set is a no-op."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        aset = build_mod.build(artifacts.artifact_set(_load(spec_file), cache_dir), bus)
    out.print(str(aset.root))


@app.command()
def fetch(
    spec_file: SpecOption = None,
    cache_dir: CacheOption = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="Base URL of a mirror holding dl.k8s.io/, github.com/ and registry.k8s.io/ directories "
            "(default: spec.artifacts.mirror when set, else the official locations).",
        ),
    ] = None,
    kubernetes_base: Annotated[
        str | None, typer.Option(help="Base for Kubernetes binaries.", show_default="https://dl.k8s.io/release")
    ] = None,
    github_base: Annotated[
        str | None, typer.Option(help="Base for GitHub release downloads.", show_default="https://github.com")
    ] = None,
    registry_base: Annotated[
        str | None, typer.Option(help="Base for the image registry.", show_default="https://registry.k8s.io")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a server before giving up.")] = 30.0,
) -> None:
    """Download the set from the official release locations or a mirror, checking published checksums."""
    bus, renderer = cli_bus()
    with fail_cleanly(renderer):
        cluster = _load(spec_file)
        url = mirror or cluster.spec.artifacts.mirror
        bases = fetch_mod.Bases.mirror(url) if url else fetch_mod.Bases()
        bases = fetch_mod.Bases(
            kubernetes_base or bases.kubernetes, github_base or bases.github, registry_base or bases.registry
        )
        aset = fetch_mod.fetch(artifacts.artifact_set(cluster, cache_dir), bus, bases, timeout=timeout)
    out.print(str(aset.root))


@app.command()
def verify(spec_file: SpecOption = None, cache_dir: CacheOption = None) -> None:
    """Check every file of the set against the manifest's sha256; lists each missing or altered file."""
    with fail_cleanly():
        aset = artifacts.artifact_set(_load(spec_file), cache_dir)
        found = artifacts.problems(aset)
        if found:
            lines = "\n".join(f"  {rel}: {what}" for rel, what in sorted(found.items()))
            raise ArtifactError(
                str(aset.root),
                f"{len(found)} of {len(artifacts.expected_paths())} files are not as the manifest says:\n{lines}\n",
                "run `provisioner artifacts build` (or fetch) to repair only those",
            )
    out.print(f"ok: {len(artifacts.expected_paths())} files match {aset.manifest}")


@app.command()
def path(spec_file: SpecOption = None, cache_dir: CacheOption = None) -> None:
    """Print the set's directory (whether or not it is complete; `verify` says)."""
    with fail_cleanly():
        aset = artifacts.artifact_set(_load(spec_file), cache_dir)
    out.print(str(aset.root))


@app.command()
def mirror(
    dest: Annotated[Path, typer.Argument(help="Directory to lay the mirror out in (served as the mirror URL).")],
    spec_file: SpecOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Write a complete set as a mirror of the official URLs, for `fetch --mirror` on air-gapped sites."""
    with fail_cleanly():
        aset = artifacts.artifact_set(_load(spec_file), cache_dir)
        found = artifacts.problems(aset)
        if found:
            raise ArtifactError(
                str(aset.root), f"the set is incomplete ({len(found)} files)", "run `provisioner artifacts build`"
            )
        written = mirror_mod.write_mirror(aset, dest)
    out.print(f"{len(written)} files under {dest}")
