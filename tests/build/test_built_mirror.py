"""`fetch` against a local mirror filled from the real built set, laid out like the official URLs.

The mirror is served by http.server on 127.0.0.1. One file in it carries a wrong checksum and must be
refused; with it repaired, the fetched set equals the built one file for file.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import artifacts
from provisioner.artifacts import fetch, images, layout, manifest
from provisioner.artifacts.layout import ArtifactSet
from provisioner.artifacts.mirror import write_mirror
from provisioner.errors import ArtifactError
from provisioner.events import EventBus
from provisioner.versions import DEFAULT_KUBERNETES

pytestmark = pytest.mark.build

VERSION = DEFAULT_KUBERNETES


@pytest.fixture
def mirror(tmp_path: Path, built: ArtifactSet) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "mirror"
    write_mirror(built, root)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def test_mirror_fetch_refuses_a_wrong_checksum_then_matches_the_build(
    tmp_path: Path, built: ArtifactSet, mirror: tuple[str, Path]
) -> None:
    url, root = mirror
    crictl = root / "github.com/kubernetes-sigs/cri-tools/releases/download/v1.37.0/crictl-v1.37.0-linux-amd64.tar.gz"
    good = crictl.read_bytes()
    crictl.write_bytes(good[:-16] + bytes(16))  # same size, wrong content
    target = ArtifactSet(tmp_path / "cache" / VERSION, VERSION)

    with pytest.raises(ArtifactError) as caught:
        fetch.fetch(target, EventBus(), fetch.Bases.mirror(url))
    assert caught.value.message().startswith(f"{url}/github.com/kubernetes-sigs/cri-tools/releases/download/")
    assert "checksum mismatch" in caught.value.message()
    assert not (target.root / "bin/crictl").exists()
    fetched_before_failure = set(manifest.load(target.manifest, VERSION).files)
    assert "bin/kubelet" in fetched_before_failure and "bin/crictl" not in fetched_before_failure

    crictl.write_bytes(good)
    fetch.fetch(target, EventBus(), fetch.Bases.mirror(url))
    assert artifacts.problems(target) == {}
    for rel in layout.expected_paths():
        if rel.startswith("images/"):
            assert images.read_layout(target.root / rel) == images.read_layout(built.root / rel), rel
        else:
            assert (target.root / rel).read_bytes() == (built.root / rel).read_bytes(), rel
