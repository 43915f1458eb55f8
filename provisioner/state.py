"""The per-cluster state directory: everything generated for one cluster lives under it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner import paths


@dataclass(frozen=True)
class State:
    root: Path

    @classmethod
    def for_cluster(cls, name: str) -> State:
        return cls(paths.state_dir(name))

    @property
    def inventory_dir(self) -> Path:
        return self.root / "inventory"

    @property
    def inventory_file(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def group_vars_file(self) -> Path:
        return self.inventory_dir / "group_vars" / "all.yml"

    @property
    def machines_file(self) -> Path:
        """The Vagrant machine list the top-level Vagrantfile reads."""
        return self.root / "machines.json"

    @property
    def hosts_file(self) -> Path:
        """The hosts `up` last reported (provisioner/hosts.py), read by verify, ssh, scale and the bench."""
        return self.root / "hosts.json"

    @property
    def known_hosts(self) -> Path:
        return self.root / "ssh" / "known_hosts"

    @property
    def ssh_control_dir(self) -> Path:
        """Master connections of provisioner's own SSH calls (verify, ssh, the bench)."""
        return self.root / "ssh" / "cm"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def user_kubeconfig(self) -> Path:
        """The admin kubeconfig as the user's own shell reaches the cluster (provisioner/admin.py)."""
        return self.root / "kubeconfig"

    @property
    def merged_file(self) -> Path:
        """What merging into the user's kubeconfig found there, so that destroy can put it back."""
        return self.root / "merged-kubeconfig.json"

    @property
    def forwarder_file(self) -> Path:
        """The loopback forwarder into the lab (provisioner/forwarder.py): pid, port, target."""
        return self.root / "forwarder.json"

    @property
    def version_file(self) -> Path:
        """The Kubernetes version the whole cluster last converged to (lifecycle.up): a version change goes
        through `provisioner upgrade`, not `up`."""
        return self.root / "kubernetes-version"

    @property
    def backups_dir(self) -> Path:
        """etcd snapshots and their sidecars (provisioner/backup.py), root-only."""
        return self.root / "backups"

    @property
    def runs_dir(self) -> Path:
        """ansible-runner private data dirs, one per run, kept for reading failures afterwards."""
        return self.root / "runs"

    @property
    def vagrant_dir(self) -> Path:
        return self.root / "vagrant"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    def ensure(self) -> State:
        for d in (self.root, self.inventory_dir, self.group_vars_file.parent, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        return self
