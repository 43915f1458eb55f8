"""The real build: every binary runs and reports its pinned version, is static, and a re-run is a no-op.

Uses the shared cache (provisioner.paths.cache_root()/artifacts), so on a warm cache this takes seconds;
on a cold one it is the full build (tens of minutes on 2 cores).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from provisioner.artifacts import build, images, layout
from provisioner.artifacts.layout import ArtifactSet
from provisioner.events import EventBus, PhaseStarted, Progress, Recorder
from provisioner.paths import cache_root
from provisioner.versions import SUPPORTED, components

pytestmark = pytest.mark.build

VERSIONS = [v for v in SUPPORTED if v in os.environ.get("PROVISIONER_BUILD_VERSIONS", "v1.37.2").split(",")]


@pytest.fixture(scope="module", params=VERSIONS)
def built(request: pytest.FixtureRequest) -> ArtifactSet:
    version = str(request.param)
    aset = ArtifactSet(cache_root() / "artifacts" / version, version)
    build.build(aset, EventBus())
    return aset


def _expected_versions(version: str) -> dict[str, tuple[list[str], str]]:
    pins = components(version)
    kube = f"Kubernetes {version}"
    return {
        "kube-apiserver": (["--version"], kube),
        "kube-controller-manager": (["--version"], kube),
        "kube-scheduler": (["--version"], kube),
        "kubelet": (["--version"], kube),
        "kube-proxy": (["--version"], kube),
        "kubectl": (["version", "--client"], f"Client Version: {version}"),
        "etcd": (["--version"], f"etcd Version: {pins.etcd.lstrip('v')}"),
        "etcdctl": (["version"], f"etcdctl version: {pins.etcd.lstrip('v')}"),
        "etcdutl": (["version"], f"etcdutl version: {pins.etcd.lstrip('v')}"),
        "containerd": (["--version"], f"containerd github.com/containerd/containerd/v2 {pins.containerd}"),
        "containerd-shim-runc-v2": (["-v"], f"Version:  {pins.containerd}"),
        "ctr": (["--version"], f"ctr github.com/containerd/containerd/v2 {pins.containerd}"),
        "runc": (["--version"], f"runc version {pins.runc.lstrip('v')}"),
        "crictl": (["--version"], f"crictl version {pins.crictl}"),
        "coredns": (["-version"], f"CoreDNS-{pins.coredns.lstrip('v')}"),
    }


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    return proc.stdout + proc.stderr


def _is_static(path: Path) -> bool:
    """True when the ELF file asks for no program interpreter (no dynamic loader, no shared libc)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not a 64-bit ELF file"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


@pytest.mark.parametrize("binary", layout.BINARIES)
def test_binary_reports_its_pinned_version(built: ArtifactSet, binary: str) -> None:
    args, expected = _expected_versions(built.kubernetes_version)[binary]
    output = _run([str(built.bin / binary), *args])
    assert expected in output, output
    assert _is_static(built.bin / binary)


@pytest.mark.parametrize("plugin", layout.CNI_PLUGINS)
def test_cni_plugin_reports_its_version(built: ArtifactSet, plugin: str) -> None:
    pins = components(built.kubernetes_version)
    output = _run([str(built.cni / plugin)], env={"CNI_COMMAND": "VERSION"})
    assert '"cniVersion"' in output and '"supportedVersions"' in output, output
    assert f"CNI {plugin} plugin {pins.cni_plugins}" in _run([str(built.cni / plugin)], env={})
    assert _is_static(built.cni / plugin)


def _image_binary(archive: Path, name: str, dest: Path) -> Path:
    _, manifest_blob, blobs = images.read_layout(archive)
    layer = blobs[json.loads(manifest_blob)["layers"][0]["digest"]]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        dest.write_bytes(handle.read())
    dest.chmod(0o755)
    return dest


def test_images_carry_the_pinned_names_and_working_binaries(built: ArtifactSet, tmp_path: Path) -> None:
    pins = components(built.kubernetes_version)
    for name, image in layout.image_names(built.kubernetes_version).items():
        assert images.image_name(built.images / f"{name}.tar") == image
    pause = _image_binary(built.images / "pause.tar", "pause", tmp_path / "pause")
    assert _run([str(pause), "-v"]).strip() == f"pause.c v{pins.pause}-{built.kubernetes_version}"
    assert _is_static(pause)
    agnhost = _image_binary(built.images / "agnhost.tar", "agnhost", tmp_path / "agnhost")
    assert f"{pins.agnhost}" in _run([str(agnhost), "--version"])
    coredns = _image_binary(built.images / "coredns.tar", "coredns", tmp_path / "coredns")
    assert coredns.read_bytes() == (built.bin / "coredns").read_bytes()


def test_second_build_is_a_no_op_in_seconds(built: ArtifactSet) -> None:
    bus, recorder = EventBus(), Recorder()
    bus.subscribe(recorder)
    before = built.manifest.read_bytes()
    started = time.monotonic()
    build.build(built, bus)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"a warm no-op took {elapsed:.1f} s"
    assert built.manifest.read_bytes() == before
    assert [e.phase for e in recorder.of(PhaseStarted) if isinstance(e, PhaseStarted)] == ["artifacts"]
    assert any("nothing to build" in e.message for e in recorder.of(Progress) if isinstance(e, Progress))
