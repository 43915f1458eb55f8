"""Artifacts: the binaries and images a cluster runs, for one pinned Kubernetes release.

`ensure()` is what the rest of the project calls: it makes the set complete (building from Go modules,
fetching official releases, or reading a mirror, as the spec says) and is a no-op on a complete set.
"""

from __future__ import annotations

import concurrent.futures
import socket
import urllib.parse
from pathlib import Path

from provisioner.artifacts import manifest
from provisioner.artifacts.fetch import Bases
from provisioner.artifacts.layout import ArtifactSet, expected_paths, expected_versions, image_names
from provisioner.errors import ArtifactError
from provisioner.events import EventBus, Warning
from provisioner.paths import cache_root
from provisioner.spec import Cluster

__all__ = [
    "ArtifactSet",
    "Bases",
    "artifact_set",
    "cache_dir",
    "ensure",
    "expected_paths",
    "image_names",
    "problems",
]

SOURCES = ("auto", "release", "mirror", "build")
# `auto` must fail fast where there is no route to the release servers, then build
AUTO_PROBE_SECONDS = 5.0


def cache_dir(cluster: Cluster, override: Path | None = None) -> Path:
    """Where sets live: --cache-dir, else spec.artifacts.cacheDir, else <cache root>/artifacts."""
    if override is not None:
        return override.expanduser()
    if cluster.spec.artifacts.cache_dir is not None:
        return cluster.spec.artifacts.cache_dir.expanduser()
    return cache_root() / "artifacts"


def artifact_set(cluster: Cluster, override: Path | None = None) -> ArtifactSet:
    version = cluster.spec.kubernetes.version
    return ArtifactSet(cache_dir(cluster, override) / version, version)


def problems(aset: ArtifactSet) -> dict[str, str]:
    """Each expected file that is unlisted, missing or altered; empty for a complete, verified set."""
    current = manifest.load(aset.manifest, aset.kubernetes_version)
    return manifest.problems(aset.root, current, expected_versions(aset.kubernetes_version))


def ensure(
    cluster: Cluster,
    bus: EventBus,
    source: str | None = None,
    cache: Path | None = None,
    bases: Bases | None = None,
) -> ArtifactSet:
    """Make the set complete for the spec's Kubernetes version; a no-op when complete and verified.

    `source` overrides spec.artifacts.source; `bases` overrides where `release` downloads from.
    """
    from provisioner.artifacts import build, fetch

    aset = artifact_set(cluster, cache)
    chosen = source or cluster.spec.artifacts.source
    if chosen not in SOURCES:
        raise ArtifactError("artifact source", f"{chosen!r} is not a source", f"use one of {', '.join(SOURCES)}")
    if chosen == "build":
        return build.build(aset, bus)
    if chosen == "mirror":
        url = cluster.spec.artifacts.mirror
        if not url:
            raise ArtifactError(
                "spec.artifacts.mirror", "source 'mirror' needs a mirror URL", "set spec.artifacts.mirror"
            )
        return fetch.fetch(aset, bus, Bases.mirror(url))
    release = bases or Bases()
    if chosen == "release":
        return fetch.fetch(aset, bus, release)
    if not problems(aset):
        return build.build(aset, bus)  # complete: reports "nothing to build" without any network access
    unreachable = _unreachable(release.kubernetes, AUTO_PROBE_SECONDS)
    if unreachable:
        bus.emit(Warning(f"release downloads are not reachable ({unreachable}); building from source instead"))
        return build.build(aset, bus)
    try:
        return fetch.fetch(aset, bus, release, timeout=AUTO_PROBE_SECONDS * 6)
    except ArtifactError as exc:
        bus.emit(Warning(f"downloading the release failed ({exc.message()}); building the rest from source"))
        return build.build(aset, bus)


def _unreachable(url: str, seconds: float) -> str:
    """Why `url`'s host cannot be reached within `seconds` (name lookup included), or '' if it can."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return ""
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)

    def connect() -> None:
        with socket.create_connection((host, port), timeout=seconds):
            pass

    # name lookup ignores socket timeouts, so the whole probe runs under a deadline in a thread
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        return f"{host}:{port}: no answer within {seconds:.0f} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    finally:
        pool.shutdown(wait=False)
    return ""
