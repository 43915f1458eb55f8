"""Write a mirror of the official release locations from a complete artifact set.

The result is a directory that any static web server can serve (or a file:// URL can name) as
`spec.artifacts.mirror`: an air-gapped site builds once, mirrors, and fetches everywhere else. The
URLs are derived from the same table `fetch` reads, so the two cannot drift apart.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from provisioner.artifacts import images
from provisioner.artifacts.fetch import Archive, Bases, Image, PlainFiles, units
from provisioner.artifacts.layout import ArtifactSet

_BASE = "mirror:"


def write_mirror(aset: ArtifactSet, dest: Path) -> list[Path]:
    """Lay the set out under `dest` as the official URLs would serve it; returns the files written."""
    bases = Bases.mirror(_BASE)
    written: list[Path] = []

    def put(url: str, data: bytes) -> Path:
        path = dest / url.removeprefix(_BASE + "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
        return path

    sums: dict[str, list[str]] = {}  # checksum files that list several artifacts (etcd's SHA256SUMS)
    for unit in units(aset.kubernetes_version, bases):
        if isinstance(unit, PlainFiles):
            for out, (url, checksum_url) in unit.files.items():
                data = (aset.root / out).read_bytes()
                put(url, data)
                name = url.rsplit("/", 1)[1]
                line = hashlib.sha256(data).hexdigest() + ("" if checksum_url == url + ".sha256" else f"  {name}")
                sums.setdefault(checksum_url, []).append(line)
        elif isinstance(unit, Archive):
            data = _tarball({name: aset.root / out for out, name in unit.members.items()})
            put(unit.url, data)
            sums.setdefault(unit.checksum_url, []).append(
                f"{hashlib.sha256(data).hexdigest()}  {unit.url.rsplit('/', 1)[1]}"
            )
        elif isinstance(unit, Image):
            name, manifest_blob, blobs = images.read_layout(aset.root / unit.outputs[0])
            base = f"{bases.registry}/v2/{unit.repository}"
            digest = "sha256:" + hashlib.sha256(manifest_blob).hexdigest()
            put(f"{base}/manifests/{name.rsplit(':', 1)[1]}", manifest_blob)
            put(f"{base}/manifests/{digest}", manifest_blob)
            for blob_digest, blob in blobs.items():
                put(f"{base}/blobs/{blob_digest}", blob)
    for url, lines in sums.items():
        put(url, ("\n".join(lines) + "\n").encode())
    return written


def _tarball(members: dict[str, Path]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, path in sorted(members.items()):
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
