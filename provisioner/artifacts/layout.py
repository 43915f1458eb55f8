"""The fixed layout of an artifact set. The Ansible roles copy files from these paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner.versions import components

BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "etcd",
    "etcdctl",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "crictl",
    "coredns",
)
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
IMAGES = ("pause", "agnhost", "coredns")

MANIFEST_NAME = "manifest.json"


def expected_paths() -> list[str]:
    """Every file a complete set holds, relative to its root."""
    return (
        [f"bin/{name}" for name in BINARIES]
        + [f"cni/{name}" for name in CNI_PLUGINS]
        + [f"images/{name}.tar" for name in IMAGES]
    )


def expected_versions(kubernetes_version: str) -> dict[str, str]:
    """The pinned version each file must come from; a file from another version is stale."""
    pins = components(kubernetes_version)
    by_binary = {
        "etcd": pins.etcd,
        "etcdctl": pins.etcd,
        "containerd": pins.containerd,
        "containerd-shim-runc-v2": pins.containerd,
        "ctr": pins.containerd,
        "runc": pins.runc,
        "crictl": pins.crictl,
        "coredns": pins.coredns,
    }
    out = {f"bin/{name}": by_binary.get(name, pins.kubernetes) for name in BINARIES}
    out.update({f"cni/{name}": pins.cni_plugins for name in CNI_PLUGINS})
    out.update({"images/pause.tar": pins.pause, "images/agnhost.tar": pins.agnhost, "images/coredns.tar": pins.coredns})
    return out


def image_names(kubernetes_version: str) -> dict[str, str]:
    """The names the images carry once imported (containerd's config pins the pause one exactly)."""
    pins = components(kubernetes_version)
    return {
        "pause": f"registry.k8s.io/pause:{pins.pause}",
        "agnhost": f"registry.k8s.io/e2e-test-images/agnhost:{pins.agnhost}",
        "coredns": f"registry.k8s.io/coredns/coredns:{pins.coredns}",
    }


@dataclass(frozen=True)
class ArtifactSet:
    """A versioned directory of binaries, CNI plugins and OCI image archives, plus its manifest."""

    root: Path
    kubernetes_version: str

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def cni(self) -> Path:
        return self.root / "cni"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def image_names(self) -> dict[str, str]:
        return image_names(self.kubernetes_version)
