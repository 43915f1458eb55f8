"""The manifest: one JSON document listing every file of a set with its origin and checksum.

It is the only record of what a set holds. A set is complete when every expected file is listed,
present, and hashes to the listed sha256; anything else is a problem the build or fetch repairs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioner.errors import ArtifactError

FORMAT = 1
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the set's root, e.g. "bin/kubelet"
    component: str  # the build/fetch unit it came from, e.g. "kubernetes", "cni-plugins"
    version: str
    source: str  # module@version, or the URL it was downloaded from
    sha256: str
    size: int


@dataclass
class Manifest:
    kubernetes: str
    images: dict[str, str] = field(default_factory=dict)
    files: dict[str, Entry] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "kubernetes": self.kubernetes,
            "images": dict(sorted(self.images.items())),
            "files": [asdict(self.files[p]) for p in sorted(self.files)],
        }
        return json.dumps(doc, indent=2) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def entry_for(root: Path, rel: str, component: str, version: str, source: str) -> Entry:
    path = root / rel
    return Entry(rel, component, version, source, sha256_file(path), path.stat().st_size)


def load(path: Path, kubernetes: str) -> Manifest:
    """Read a manifest; a missing one is an empty manifest, a corrupt one is an ArtifactError."""
    if not path.exists():
        return Manifest(kubernetes)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = {e["path"]: Entry(**e) for e in doc["files"]}
        manifest = Manifest(doc["kubernetes"], dict(doc.get("images", {})), files)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(
            str(path), f"the manifest is not readable ({exc})", "delete it and run `provisioner artifacts build`"
        ) from None
    if manifest.kubernetes != kubernetes:
        raise ArtifactError(
            str(path),
            f"the manifest describes Kubernetes {manifest.kubernetes}, not {kubernetes}",
            "use a cache directory per version (the default layout does this)",
        )
    return manifest


def save(manifest: Manifest, path: Path) -> None:
    # write-then-rename so an interrupted build never leaves a half-written manifest behind
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, path)


def problems(root: Path, manifest: Manifest, expected: dict[str, str]) -> dict[str, str]:
    """Each expected file (path -> pinned version) that is not listed, from another version, missing,
    or altered, mapped to what is wrong with it."""
    found: dict[str, str] = {}
    for rel, version in expected.items():
        entry = manifest.files.get(rel)
        path = root / rel
        if entry is None:
            found[rel] = "not in the manifest"
        elif entry.version != version:
            found[rel] = f"is version {entry.version}, the pin is {version}"
        elif not path.is_file():
            found[rel] = "missing"
        elif path.stat().st_size != entry.size:
            found[rel] = f"size {path.stat().st_size} differs from the manifest's {entry.size}"
        elif sha256_file(path) != entry.sha256:
            found[rel] = "sha256 differs from the manifest"
    return found


@contextlib.contextmanager
def locked(root: Path, waiting: Callable[[], None]) -> Iterator[None]:
    """Hold the set's lock: two builds or fetches of one set must not write the same files at once.

    `waiting` is called once if another process holds it, before blocking until it is released.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f".{root.name}.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
