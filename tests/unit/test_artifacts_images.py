"""OCI archives written with the standard library are valid image layouts containerd can import."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from provisioner.artifacts import images


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out = {}
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                out[member.name] = handle.read()
        return out


def _write(tmp_path: Path, out: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF fake static binary")
    images.write_image(out, "registry.k8s.io/pause:3.10.2", [images.FileSpec("pause", binary)], ["/pause"])


def test_archive_is_a_complete_oci_layout(tmp_path: Path) -> None:
    archive = tmp_path / "pause.tar"
    _write(tmp_path, archive)
    files = _members(archive)

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    [entry] = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "registry.k8s.io/pause:3.10.2"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "3.10.2"

    def blob(descriptor: dict[str, object]) -> bytes:
        digest = str(descriptor["digest"])
        data = files["blobs/sha256/" + digest.removeprefix("sha256:")]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        assert len(data) == descriptor["size"]
        return data

    manifest = json.loads(blob(entry))
    assert manifest["mediaType"] == images.MEDIA_MANIFEST
    config = json.loads(blob(manifest["config"]))
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Entrypoint"] == ["/pause"]
    [layer_ref] = manifest["layers"]
    layer = gzip.decompress(blob(layer_ref))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        member = tar.getmember("pause")
        assert member.mode == 0o755
        handle = tar.extractfile(member)
        assert handle is not None
        assert handle.read() == b"\x7fELF fake static binary"
    assert images.image_name(archive) == "registry.k8s.io/pause:3.10.2"


def test_archives_are_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    _write(tmp_path, first)
    _write(tmp_path, second)
    assert first.read_bytes() == second.read_bytes()


def test_layout_round_trips(tmp_path: Path) -> None:
    archive, copy = tmp_path / "a.tar", tmp_path / "b.tar"
    _write(tmp_path, archive)
    name, manifest_blob, blobs = images.read_layout(archive)
    images.write_layout(copy, name, manifest_blob, blobs)
    assert copy.read_bytes() == archive.read_bytes()
