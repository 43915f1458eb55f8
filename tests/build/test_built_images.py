"""The built image archives import into the built containerd, under the names the cluster pins.

containerd runs here on the host in a private root, state and socket under a temporary directory,
with the CRI plugin disabled (it would otherwise set up pod networking); nothing leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.artifacts import layout
from provisioner.artifacts.layout import ArtifactSet
from provisioner.versions import DEFAULT_KUBERNETES

pytestmark = [
    pytest.mark.build,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root to mount snapshots"),
]

VERSION = DEFAULT_KUBERNETES


@pytest.fixture
def containerd(built: ArtifactSet, tmp_path: Path) -> Iterator[list[str]]:
    socket = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        "version = 3\n"
        f"root = '{tmp_path / 'root'}'\n"
        f"state = '{tmp_path / 'state'}'\n"
        "disabled_plugins = ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.runtime', "
        "'io.containerd.cri.v1.images']\n"
        f"[grpc]\n  address = '{socket}'\n"
        f"[ttrpc]\n  address = '{socket}.ttrpc'\n"
        f"[debug]\n  address = '{socket}.debug'\n"
        # ctr imports through the transfer service, which unpacks only for platforms listed here; the
        # native snapshotter because overlayfs may be unavailable where these tests run
        "[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n"
        "  platform = 'linux/amd64'\n"
        "  snapshotter = 'native'\n"
    )
    log = (tmp_path / "containerd.log").open("w")
    env = dict(os.environ, PATH=f"{built.bin}:{os.environ['PATH']}")
    daemon = subprocess.Popen([str(built.bin / "containerd"), "--config", str(config)], stdout=log, stderr=log, env=env)
    ctr = [str(built.bin / "ctr"), "--address", str(socket), "--namespace", "k8s.io"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode != 0:
            assert daemon.poll() is None, (tmp_path / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not answer within 30 s"
            time.sleep(0.2)
        yield ctr
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def test_both_images_import_under_their_pinned_names(built: ArtifactSet, containerd: list[str]) -> None:
    for name in layout.IMAGES:
        archive = built.images / f"{name}.tar"
        result = subprocess.run(
            [*containerd, "images", "import", "--snapshotter", "native", str(archive)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    listed = subprocess.run([*containerd, "images", "list", "--quiet"], capture_output=True, text=True, check=True)
    names = set(listed.stdout.split())
    for image in layout.image_names(VERSION).values():
        assert image in names
