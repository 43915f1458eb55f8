"""OCI image-layout archives written with the standard library.

`ctr images import` accepts a tar of an OCI layout (oci-layout, index.json, blobs/sha256/...) and
names the image after the index's `io.containerd.image.name` annotation. Every timestamp and owner
is fixed, so the same binary always gives the same archive (and the same sha256 in the manifest).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

EPOCH = 0  # fixed mtime for every tar member and gzip header: reproducible archives
CREATED = "1970-01-01T00:00:00Z"

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class FileSpec:
    """One file in the image's single layer."""

    path: str  # inside the image, without a leading slash
    source: Path
    mode: int = 0o755


def _tarinfo(name: str, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.type = kind
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _layer(files: list[FileSpec], dirs: dict[str, int]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in sorted(dirs.items()):
            tar.addfile(_tarinfo(name, mode=mode, kind=tarfile.DIRTYPE))
        for spec in sorted(files, key=lambda f: f.path):
            data = spec.source.read_bytes()
            tar.addfile(_tarinfo(spec.path, len(data), spec.mode), io.BytesIO(data))
    return raw.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_image(
    out: Path,
    name: str,
    files: list[FileSpec],
    entrypoint: list[str],
    cmd: list[str] | None = None,
    dirs: dict[str, int] | None = None,
) -> None:
    """Write `out` as a tar of an OCI layout holding one linux/amd64 image called `name`."""
    layer_tar = _layer(files, dirs or {})
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    layer_digest, layer = _blob(gzip.compress(layer_tar, compresslevel=6, mtime=EPOCH))
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {"Entrypoint": entrypoint, **({"Cmd": cmd} if cmd else {}), "User": "0"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "provisioner artifacts"}],
    }
    config_digest, config_blob = _blob(_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    write_layout(out, name, _json(manifest), {layer_digest: layer, config_digest: config_blob})


def write_layout(out: Path, name: str, manifest_blob: bytes, blobs: dict[str, bytes]) -> None:
    """Write `out` as a tar of an OCI layout: one image manifest, its blobs, and an index naming it."""
    manifest_digest = "sha256:" + hashlib.sha256(manifest_blob).hexdigest()
    tag = name.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": json.loads(manifest_blob).get("mediaType", MEDIA_MANIFEST),
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    everything = dict(blobs, **{manifest_digest: manifest_blob})
    members = [
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _json(index)),
        *((f"blobs/sha256/{digest.split(':')[1]}", everything[digest]) for digest in sorted(everything)),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_tarinfo(directory, mode=0o755, kind=tarfile.DIRTYPE))
        for member, data in members:
            tar.addfile(_tarinfo(member, len(data)), io.BytesIO(data))
    tmp.replace(out)


def read_layout(archive: Path) -> tuple[str, bytes, dict[str, bytes]]:
    """The image name, manifest bytes and blobs (by digest) of an archive written by write_layout."""
    with tarfile.open(archive) as tar:
        files = {m.name: _read(tar, m) for m in tar.getmembers() if m.isfile()}
    index = json.loads(files["index.json"])
    entry = index["manifests"][0]
    manifest_blob = files["blobs/sha256/" + entry["digest"].split(":")[1]]
    blobs = {
        "sha256:" + name.rsplit("/", 1)[1]: data for name, data in files.items() if name.startswith("blobs/sha256/")
    }
    blobs.pop(entry["digest"])
    return str(entry["annotations"]["io.containerd.image.name"]), manifest_blob, blobs


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def image_name(archive: Path) -> str:
    """The name an archive imports as (read back from its index.json)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{archive}: index.json is not a file")
        index = json.load(member)
    return str(index["manifests"][0]["annotations"]["io.containerd.image.name"])
