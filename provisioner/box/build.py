"""Build the lab box offline from Debian packages: debootstrap, a few files, an ext4 image, a libvirt box.

No network but the Debian mirror, no loop device, no NBD (the host kernel has neither to spare): the root
filesystem is packed with `mke2fs -d` and booted directly with the kernel and initrd shipped beside it.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner import paths
from provisioner.box.recipe import BOX_NAME, RECIPE, Recipe
from provisioner.errors import ArtifactError, ToolMissing
from provisioner.events import EventBus, Phase

DEFAULT_MIRROR = "http://deb.debian.org/debian"
BOX_FILE = "provisioner-debian12.box"
TOOLS = {"debootstrap": "debootstrap", "mke2fs": "e2fsprogs", "qemu-img": "qemu-utils", "chroot": "coreutils"}

BOX_VAGRANTFILE = """# Embedded in the provisioner lab box. The image has no bootloader: libvirt boots
# the kernel and initrd beside this file. The top-level Vagrantfile adds each node's identity.
Vagrant.configure("2") do |config|
  config.vm.guest = :debian
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    lv.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    lv.cmd_line = "{cmdline}"
    lv.disk_bus = "virtio"
  end
end
"""


@dataclass(frozen=True)
class Box:
    """A built box in the cache."""

    name: str
    digest: str
    path: Path  # the .box file, for `vagrant box add`

    @property
    def manifest(self) -> Path:
        return self.path.parent / "manifest.json"


def box_dir(recipe: Recipe = RECIPE) -> Path:
    return paths.cache_root() / "box" / recipe.digest()


def cached(recipe: Recipe = RECIPE) -> Box | None:
    """The box for this recipe if a build finished it: a build that was interrupted leaves no manifest, and
    a box file whose size or recipe is not the one its manifest records is not what that build wrote."""
    box = Box(BOX_NAME, recipe.digest(), box_dir(recipe) / BOX_FILE)
    try:
        manifest = json.loads(box.manifest.read_text())
        size = box.path.stat().st_size
    except (OSError, ValueError):
        return None
    recorded = (manifest.get("digest"), manifest.get("size_bytes")) if isinstance(manifest, dict) else None
    return box if box.path.is_file() and recorded == (box.digest, size) else None


def build(bus: EventBus, recipe: Recipe = RECIPE, mirror: str | None = None, force: bool = False) -> Box:
    """Return the cached box for the recipe, building it first if the recipe changed or it is missing."""
    if not force and (box := cached(recipe)) is not None:
        with Phase(bus, "box", f"reusing cached {box.path}"):
            return box
    _require_tools()
    lock_file = paths.cache_root() / "box" / ".build.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    # Two `up`s at once would debootstrap into the same directory; the second waits, then reuses.
    with lock_file.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (box := cached(recipe)) is not None:
            with Phase(bus, "box", f"reusing {box.path}, built meanwhile"):
                return box
        return _build(bus, recipe, mirror)


def _build(bus: EventBus, recipe: Recipe, mirror: str | None) -> Box:
    mirror = mirror or os.environ.get("PROVISIONER_DEBIAN_MIRROR") or DEFAULT_MIRROR
    final = box_dir(recipe)
    work = final.with_name(final.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rootfs = work / "rootfs"
    started = time.monotonic()
    with Phase(bus, "box", f"building {BOX_NAME} ({recipe.digest()}) from {mirror}") as phase:
        phase.progress(f"debootstrap {recipe.suite} ({len(recipe.packages)} packages)")
        debs = paths.cache_root() / "box" / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "debootstrap",
                f"--variant={recipe.variant}",
                f"--cache-dir={debs}",
                f"--include={','.join(recipe.packages)}",
                recipe.suite,
                str(rootfs),
                mirror,
            ],
            "debootstrap",
            f"check that {mirror} is reachable, or set PROVISIONER_DEBIAN_MIRROR to a Debian mirror",
        )
        phase.progress("configuring the image")
        _configure(rootfs, recipe)
        kernel, initrd = _boot_files(rootfs)
        shutil.copy2(kernel, work / "vmlinuz")
        shutil.copy2(initrd, work / "initrd.img")
        phase.progress(f"packing ext4 ({recipe.disk_gib} GiB virtual) and qcow2")
        raw = work / "root.raw"
        _run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", str(rootfs), str(raw), f"{recipe.disk_gib}G"],
            "mke2fs",
            "check free space in the cache directory",
        )
        shutil.rmtree(rootfs)
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "box.img")], "qemu-img convert", "")
        raw.unlink()
        metadata = {"provider": "libvirt", "format": "qcow2", "virtual_size": recipe.disk_gib}
        (work / "metadata.json").write_text(json.dumps(metadata) + "\n")
        (work / "Vagrantfile").write_text(BOX_VAGRANTFILE.replace("{cmdline}", recipe.kernel_cmdline))
        phase.progress("writing the .box archive")
        # Uncompressed: the qcow2 is mostly data already, and gzip would cost tens of seconds on every build.
        with tarfile.open(work / BOX_FILE, "w") as tar:
            for member in ("metadata.json", "Vagrantfile", "box.img", "vmlinuz", "initrd.img"):
                tar.add(work / member, arcname=member)
        for member in ("box.img", "vmlinuz", "initrd.img"):
            (work / member).unlink()
        manifest = {
            "name": BOX_NAME,
            "digest": recipe.digest(),
            "mirror": mirror,
            "suite": recipe.suite,
            "packages": list(recipe.packages),
            "kernel": kernel.name,
            "build_seconds": round(time.monotonic() - started, 1),
            "size_bytes": (work / BOX_FILE).stat().st_size,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    box = cached(recipe)
    assert box is not None
    return box


def _require_tools() -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise ToolMissing(
            "box build",
            f"missing {', '.join(missing)}",
            f"install them: apt-get install {' '.join(sorted(set(TOOLS.values())))}",
        )
    if os.geteuid() != 0:
        raise ArtifactError("box build", "debootstrap and chroot need root", "run `provisioner box build` as root")


def _configure(rootfs: Path, recipe: Recipe) -> None:
    for path, (content, mode) in recipe.files.items():
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(content)
        target.chmod(mode)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    for command in recipe.chroot_commands:
        _run(["chroot", str(rootfs), *command], " ".join(command), "", env=env)
    # An empty machine-id makes every clone generate its own on first boot.
    (rootfs / "etc" / "machine-id").write_text("")
    for pattern in recipe.remove_globs:
        for match in glob.glob(str(rootfs / pattern)):
            Path(match).unlink()


def _boot_files(rootfs: Path) -> tuple[Path, Path]:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise ArtifactError(
            "box build",
            f"expected one kernel and one initrd in /boot, found {len(kernels)} and {len(initrds)}",
            "check the package list in provisioner/box/recipe.py",
        )
    return kernels[0], initrds[0]


def _run(command: list[str], what: str, fix: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ArtifactError(f"box build: {what}", f"exit {proc.returncode}:\n{tail}", fix)
