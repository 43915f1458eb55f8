"""QEMU runs unprivileged: the daemons' mount namespace makes the way down to the lab traversable and
hides the rest of root's private directory. Tried for real with unshare and an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.providers import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root")

NOBODY = "nobody"  # exists everywhere; the lab's own user (libvirt-qemu) is made only when a lab starts


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is itself under a 0700 directory, which would be the one hidden.
    home = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="netns-view-")) / "root-home"
    lab = home / ".local" / "state" / "provisioner" / "lab" / "vagrant"
    home.parent.chmod(0o755)  # mkdtemp makes it 0700
    lab.mkdir(parents=True)
    (lab / "pool").mkdir()
    (lab / "pool" / "disk.img").write_text("disk\n")
    (lab.parent / "pki").mkdir(mode=0o700)
    (lab.parent / "pki" / "ca.key").write_text("secret")
    for directory in (home, lab.parent):
        directory.chmod(0o700)
    yield home
    shutil.rmtree(home.parent)


def test_the_first_private_directory_on_the_way_is_found(home: Path) -> None:
    lab = home / ".local" / "state" / "provisioner" / "lab" / "vagrant"
    assert netns.private_ancestor(lab) == home
    assert netns.private_ancestor(Path("/usr/bin")) is None


def test_qemus_user_reaches_the_lab_and_nothing_else_of_roots_home(home: Path) -> None:
    lab = home / ".local" / "state" / "provisioner" / "lab" / "vagrant"
    ns = netns.LabNamespace(f"unit-{uuid.uuid4().hex[:8]}", lab / "libvirt", visible=lab)
    try:
        script = ns._view_script()
        assert script
        as_nobody = f"setpriv --reuid={NOBODY} --regid=nogroup --clear-groups"
        probe = (
            f"{script} true; "
            f"{as_nobody} cat {lab / 'pool' / 'disk.img'}; "
            f"test -e {lab.parent / 'pki' / 'ca.key'} && echo pki-visible || echo pki-hidden"
        )
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", probe],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.stdout.split() == ["disk", "pki-hidden"], done.stderr
        # Outside that namespace nothing changed: root's home is as private as before.
        outside = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                "--regid=nogroup",
                "--clear-groups",
                "cat",
                str(lab / "pool" / "disk.img"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert outside.returncode != 0
        assert (lab.parent / "pki" / "ca.key").read_text() == "secret"
    finally:
        shutil.rmtree(ns.runtime, ignore_errors=True)


def test_qemu_conf_runs_qemu_unprivileged_with_seccomp() -> None:
    conf = dict(
        line.split(" = ", 1) for line in netns.QEMU_CONF.splitlines() if " = " in line and not line.startswith("#")
    )
    assert conf["user"] == f'"{netns.QEMU_USER}"' and conf["group"] == f'"{netns.QEMU_USER}"'
    assert conf["dynamic_ownership"] == "1" and conf["seccomp_sandbox"] == "1"
    assert "security_driver" not in conf
