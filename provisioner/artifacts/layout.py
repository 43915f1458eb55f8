"""The fixed layout of an artifact set: its files come from the artifact table in provisioner/layout.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner.layout import ARTIFACTS, artifacts_of
from provisioner.versions import components

# Derived from the one artifact table (provisioner/layout.py): what the set holds, by kind.
BINARIES = tuple(a.name for a in artifacts_of("bin"))
CNI_PLUGINS = tuple(a.name for a in artifacts_of("cni"))
IMAGES = tuple(a.name for a in artifacts_of("images"))

MANIFEST_NAME = "manifest.json"


def expected_paths() -> list[str]:
    """Every file a complete set holds, relative to its root."""
    return [a.path for a in ARTIFACTS]


def expected_versions(kubernetes_version: str) -> dict[str, str]:
    """The pinned version each file must come from; a file from another version is stale."""
    pins = components(kubernetes_version)
    return {a.path: str(getattr(pins, a.component)) for a in ARTIFACTS}


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
