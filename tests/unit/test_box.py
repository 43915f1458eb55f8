"""The box recipe: its cache key follows its content, and what it writes into the image is sound."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner import box
from provisioner.box import recipe
from provisioner.box.build import BOX_FILE
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


def _built(content: bytes = b"a box archive\n", **changes: object) -> Path:
    """The cache as a finished build leaves it (build.py's _build): the .box file and its manifest."""
    directory = box.box_dir()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / BOX_FILE).write_bytes(content)
    manifest = {
        "name": box.BOX_NAME,
        "digest": recipe.RECIPE.digest(),
        "mirror": "http://deb.debian.org/debian",
        "suite": recipe.RECIPE.suite,
        "packages": list(recipe.RECIPE.packages),
        "kernel": "vmlinuz-6.1.0-40-amd64",
        "build_seconds": 412.5,
        "size_bytes": len(content),
        **changes,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory / BOX_FILE


def test_a_complete_build_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_CACHE", str(tmp_path))
    assert box.cached() is None
    path = _built()
    found = box.cached()
    assert found is not None and (found.path, found.digest) == (path, recipe.RECIPE.digest())


def _no_manifest() -> None:
    _built()
    (box.box_dir() / "manifest.json").unlink()


def _no_box() -> None:
    _built().unlink()


def _empty_manifest() -> None:
    _built(b"half")
    (box.box_dir() / "manifest.json").write_text("{}")


def _manifest_cut_short() -> None:
    _built()
    manifest = box.box_dir() / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])


def _truncated() -> None:
    path = _built(b"a box archive, all of it\n")
    path.write_bytes(path.read_bytes()[:4])


def _other_recipe() -> None:
    other = dataclasses.replace(recipe.RECIPE, packages=(*recipe.RECIPE.packages, "curl"))
    _built(digest=other.digest())


@pytest.mark.parametrize(
    "damage",
    [_no_manifest, _no_box, _empty_manifest, _manifest_cut_short, _truncated, _other_recipe],
    ids=[
        "no-manifest",
        "no-box",
        "empty-manifest",
        "manifest-cut-short",
        "box-truncated",
        "manifest-of-another-recipe",
    ],
)
def test_a_missing_or_interrupted_build_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Callable[[], object]
) -> None:
    """A box file that its manifest does not describe (size, recipe) is not what that recipe built."""
    monkeypatch.setenv("PROVISIONER_CACHE", str(tmp_path))
    damage()
    assert box.cached() is None


def test_build_reuses_the_cached_box_without_running_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_CACHE", str(tmp_path))
    path = _built(b"box")
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert box.build(EventBus()).path == path


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a cached box must not be rebuilt: {args}")
