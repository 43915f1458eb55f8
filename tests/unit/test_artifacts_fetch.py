"""Fetching from a mirror laid out like the official URLs, served over HTTP on 127.0.0.1.

The set served here is synthetic (small files and real OCI archives) so the test runs in a second;
tests/build/test_artifacts_mirror.py repeats it with the real built set.
"""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import artifacts, paths, spec
from provisioner.artifacts import build, fetch, images, layout, manifest
from provisioner.artifacts.layout import ArtifactSet
from provisioner.artifacts.mirror import write_mirror
from provisioner.errors import ArtifactError
from provisioner.events import EventBus, Progress, Recorder, Warning

VERSION = "v1.37.2"


def make_set(root: Path) -> ArtifactSet:
    """A complete set whose binaries are small stand-ins, recorded in a manifest like a build's."""
    aset = ArtifactSet(root, VERSION)
    current = manifest.Manifest(VERSION, layout.image_names(VERSION))
    for rel in layout.expected_paths():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("images/"):
            name = Path(rel).stem
            binary = root / f"{name}.bin"
            binary.write_bytes(f"binary of {name}".encode())
            images.write_image(path, layout.image_names(VERSION)[name], [images.FileSpec(name, binary)], [f"/{name}"])
        else:
            path.write_bytes(f"#!/bin/sh\necho {rel}\n".encode())
            path.chmod(0o755)
        current.files[rel] = manifest.entry_for(root, rel, "test", layout.expected_versions(VERSION)[rel], "test")
    manifest.save(current, aset.manifest)
    return aset


class Server:
    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                requests.append(self.path)

        handler = functools.partial(Handler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def source(tmp_path: Path) -> ArtifactSet:
    return make_set(tmp_path / "source" / VERSION)


@pytest.fixture
def server(tmp_path: Path, source: ArtifactSet) -> Iterator[Server]:
    write_mirror(source, tmp_path / "mirror")
    srv = Server(tmp_path / "mirror")
    yield srv
    srv.close()


def _recorded() -> tuple[EventBus, Recorder]:
    bus, recorder = EventBus(), Recorder()
    bus.subscribe(recorder)
    return bus, recorder


def test_fetch_from_mirror_gives_the_same_set(tmp_path: Path, source: ArtifactSet, server: Server) -> None:
    target = ArtifactSet(tmp_path / "cache" / VERSION, VERSION)
    fetch.fetch(target, EventBus(), fetch.Bases.mirror(server.url))

    assert artifacts.problems(target) == {}
    for rel in layout.expected_paths():
        if not rel.startswith("images/"):
            assert (target.root / rel).read_bytes() == (source.root / rel).read_bytes(), rel
    for name, image in layout.image_names(VERSION).items():
        assert images.image_name(target.root / f"images/{name}.tar") == image
        assert images.read_layout(target.root / f"images/{name}.tar") == images.read_layout(
            source.root / f"images/{name}.tar"
        )
    listed = manifest.load(target.manifest, VERSION)
    assert listed.files["bin/kubelet"].source == f"{server.url}/dl.k8s.io/release/{VERSION}/bin/linux/amd64/kubelet"
    assert listed.files["bin/etcd"].source.endswith(
        "/github.com/etcd-io/etcd/releases/download/v3.6.16/etcd-v3.6.16-linux-amd64.tar.gz"
    )
    assert listed.images["pause"] == "registry.k8s.io/pause:3.10.2"


def test_second_fetch_touches_no_server(tmp_path: Path, server: Server) -> None:
    target = ArtifactSet(tmp_path / "cache" / VERSION, VERSION)
    fetch.fetch(target, EventBus(), fetch.Bases.mirror(server.url))
    server.requests.clear()
    bus, recorder = _recorded()
    fetch.fetch(target, bus, fetch.Bases.mirror(server.url))
    assert server.requests == []
    assert any("nothing to fetch" in e.message for e in recorder.of(Progress) if isinstance(e, Progress))


def test_partial_or_altered_set_fetches_only_that_component(tmp_path: Path, server: Server) -> None:
    target = ArtifactSet(tmp_path / "cache" / VERSION, VERSION)
    fetch.fetch(target, EventBus(), fetch.Bases.mirror(server.url))
    (target.root / "bin/etcdctl").unlink()
    bridge = target.root / "cni/bridge"
    bridge.write_bytes(bridge.read_bytes().replace(b"echo", b"ECHO"))
    assert artifacts.problems(target) == {
        "bin/etcdctl": "missing",
        "cni/bridge": "sha256 differs from the manifest",
    }
    server.requests.clear()
    fetch.fetch(target, EventBus(), fetch.Bases.mirror(server.url))
    assert artifacts.problems(target) == {}
    assert sorted(server.requests) == [
        "/github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz",
        "/github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz.sha256",
        "/github.com/etcd-io/etcd/releases/download/v3.6.16/SHA256SUMS",
        "/github.com/etcd-io/etcd/releases/download/v3.6.16/etcd-v3.6.16-linux-amd64.tar.gz",
    ]


def test_wrong_checksum_is_refused(tmp_path: Path, server: Server) -> None:
    kubelet = tmp_path / "mirror" / "dl.k8s.io" / "release" / VERSION / "bin/linux/amd64/kubelet"
    kubelet.write_bytes(kubelet.read_bytes() + b"# tampered\n")
    target = ArtifactSet(tmp_path / "cache" / VERSION, VERSION)
    with pytest.raises(ArtifactError) as caught:
        fetch.fetch(target, EventBus(), fetch.Bases.mirror(server.url))
    message = caught.value.message()
    assert message.startswith(f"{server.url}/dl.k8s.io/release/{VERSION}/bin/linux/amd64/kubelet: checksum mismatch")
    assert "published" in message and "discarded" in message
    assert not (target.root / "bin/kubelet").exists()
    assert "bin/kubelet" not in manifest.load(target.manifest, VERSION).files


def test_corrupt_image_blob_is_refused(tmp_path: Path, server: Server) -> None:
    blobs = tmp_path / "mirror" / "registry.k8s.io" / "v2" / "pause" / "blobs"
    layer = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    layer.write_bytes(layer.read_bytes()[:-1] + b"\0")
    target = ArtifactSet(tmp_path / "cache" / VERSION, VERSION)
    with pytest.raises(ArtifactError, match=r"/v2/pause/blobs/sha256:[0-9a-f]{64}: checksum mismatch"):
        fetch.fetch(target, EventBus(), fetch.Bases.mirror(server.url))
    assert not (target.root / "images/pause.tar").exists()


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    target = ArtifactSet(tmp_path / "cache" / VERSION, VERSION)
    with pytest.raises(ArtifactError, match=r"127\.0\.0\.1:\d+/dl\.k8s\.io/.*: cannot download: .*refused"):
        fetch.fetch(target, EventBus(), fetch.Bases.mirror(f"http://127.0.0.1:{_closed_port()}"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster(tmp_path: Path, source: str, mirror: str | None = None) -> spec.Cluster:
    cluster = spec.load(paths.default_spec())
    arts = cluster.spec.artifacts.model_copy(update={"source": source, "mirror": mirror, "cache_dir": tmp_path})
    return cluster.model_copy(update={"spec": cluster.spec.model_copy(update={"artifacts": arts})})


def test_auto_falls_back_to_build_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[ArtifactSet] = []
    monkeypatch.setattr(build, "build", lambda aset, bus: built.append(aset) or aset)
    bus, recorder = _recorded()
    offline = fetch.Bases.mirror(f"http://127.0.0.1:{_closed_port()}")
    aset = artifacts.ensure(_cluster(tmp_path, "auto"), bus, bases=offline)
    assert built == [aset] and aset.root == tmp_path / VERSION
    [warning] = [e for e in recorder.of(Warning) if isinstance(e, Warning)]
    assert "release downloads are not reachable" in warning.message
    assert "building from source instead" in warning.message


def test_mirror_source_fetches_from_the_spec_mirror(tmp_path: Path, server: Server) -> None:
    aset = artifacts.ensure(_cluster(tmp_path / "cache", "mirror", server.url), EventBus())
    assert artifacts.problems(aset) == {}
