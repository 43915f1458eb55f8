"""The lab's libvirt objects, through virsh: the storage pool for its disks, and whatever `vagrant destroy` leaves.

virsh talks to the lab's libvirtd (the private one in the lab's namespace, or the system's) and runs where the
lab is reachable, behind the same command prefix as every other lab command.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.providers import netns


@dataclass(frozen=True)
class Virsh:
    """virsh against the lab's libvirtd, run behind the lab's command prefix."""

    uri: str
    prefix: Sequence[str] = ()

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return netns.run(list(self.prefix), ["virsh", "-c", self.uri, *args], check=check)

    def names(self, *args: str, check: bool = True) -> list[str]:
        """The names a `virsh ... --name` listing prints."""
        return self.run(*args, check=check).stdout.split()


def ensure_pool(virsh: Virsh, pool: str, path: Path) -> None:
    """A directory pool for this lab's disks (vagrant-libvirt creates only a pool named `default`)."""
    path.mkdir(parents=True, exist_ok=True)
    if pool not in virsh.names("pool-list", "--all", "--name"):
        virsh.run("pool-define-as", pool, "dir", "--target", str(path))
    info = virsh.run("pool-info", pool).stdout
    if "running" not in info:
        virsh.run("pool-start", pool)


def remove_lab_objects(
    virsh: Virsh, domain_prefix: str, networks: Sequence[str], pool: str, progress: Callable[[str], None]
) -> None:
    """What `vagrant destroy` leaves (networks, the pool and its box volume) or missed (domains)."""
    domains = virsh.names("list", "--all", "--name", check=False)
    for domain in (d for d in domains if d.startswith(domain_prefix)):
        progress(f"removing leftover domain {domain}")
        virsh.run("destroy", domain, check=False)
        virsh.run("undefine", domain, "--remove-all-storage", "--nvram", check=False)
    defined = virsh.names("net-list", "--all", "--name", check=False)
    for network in networks:
        if network in defined:
            virsh.run("net-destroy", network, check=False)
            virsh.run("net-undefine", network)
    if pool in virsh.names("pool-list", "--all", "--name", check=False):
        for volume in virsh.names("vol-list", pool, "--name", check=False):
            virsh.run("vol-delete", volume, "--pool", pool, check=False)
        virsh.run("pool-destroy", pool, check=False)
        virsh.run("pool-undefine", pool)
