"""The box recipe: its cache key follows its content, and what it writes into the image is sound."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner import box
from provisioner.box import recipe
from provisioner.events import EventBus


def test_digest_is_stable_and_follows_the_content() -> None:
    base = recipe.Recipe()
    assert base.digest() == recipe.Recipe().digest()
    assert dataclasses.replace(base, packages=(*base.packages, "curl")).digest() != base.digest()
    files = dict(base.files)
    files["/etc/motd"] = ("hello\n", 0o644)
    assert dataclasses.replace(base, files=files).digest() != base.digest()
    assert dataclasses.replace(base, build_format=base.build_format + 1).digest() != base.digest()


def test_image_has_what_nodes_need_and_no_container_runtime() -> None:
    packages = set(recipe.PACKAGES)
    assert {"openssh-server", "python3", "systemd-sysv", "linux-image-amd64", "conntrack", "iptables"} <= packages
    assert not packages & {"containerd", "docker.io", "runc", "kubelet", "kubernetes-client"}


def test_no_swap_and_no_per_machine_identity_in_the_image() -> None:
    assert "swap" not in recipe.FILES["/etc/fstab"][0]
    assert "etc/ssh/ssh_host_*" in recipe.REMOVE_GLOBS
    assert "HostKey /etc/ssh/ssh_host_ed25519_key" in recipe.SSHD_CONFIG


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_identity_script_is_valid_shell() -> None:
    proc = subprocess.run(["sh", "-n"], input=recipe.IDENTITY_SCRIPT, text=True, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_missing_or_interrupted_build_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_CACHE", str(tmp_path))
    assert box.cached() is None
    directory = box.box_dir()
    directory.mkdir(parents=True)
    (directory / "provisioner-debian12.box").write_bytes(b"half")
    assert box.cached() is None, "a box without its manifest is an interrupted build"
    (directory / "manifest.json").write_text("{}")
    found = box.cached()
    assert found is not None and found.digest == recipe.RECIPE.digest()


def test_build_reuses_the_cached_box_without_running_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_CACHE", str(tmp_path))
    directory = box.box_dir()
    directory.mkdir(parents=True)
    (directory / "provisioner-debian12.box").write_bytes(b"box")
    (directory / "manifest.json").write_text("{}")
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert box.build(EventBus()).path == directory / "provisioner-debian12.box"


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a cached box must not be rebuilt: {args}")
