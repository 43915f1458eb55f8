"""Download the artifact set from the official release locations (or a mirror laid out like them).

Every file is checked against its project's published checksum before it enters the set; images are
pulled through the OCI distribution API and every blob is checked against its digest. A mirror is one
base URL holding one directory per official host (`<mirror>/dl.k8s.io/release/...`,
`<mirror>/github.com/...`, `<mirror>/registry.k8s.io/v2/...`), so it can be filled by mirroring
the official URLs verbatim (`provisioner.artifacts.mirror.write_mirror` does it from a built set).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from provisioner import layout
from provisioner.artifacts import images, manifest
from provisioner.artifacts.layout import ArtifactSet, expected_paths, expected_versions, image_names
from provisioner.errors import ArtifactError
from provisioner.events import EventBus, Phase
from provisioner.versions import components

CHUNK = 1 << 20
ACCEPT_MANIFESTS = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclass(frozen=True)
class Bases:
    """Where each kind of official artifact is downloaded from."""

    kubernetes: str = "https://dl.k8s.io/release"
    github: str = "https://github.com"
    registry: str = "https://registry.k8s.io"

    @classmethod
    def mirror(cls, url: str) -> Bases:
        base = url.rstrip("/")
        return cls(f"{base}/dl.k8s.io/release", f"{base}/github.com", f"{base}/registry.k8s.io")


@dataclass
class Fetcher:
    """Downloads with one timeout for connecting and reading; failures become ArtifactErrors."""

    timeout: float = 30.0

    def open(self, url: str, accept: str = "") -> io.BufferedIOBase:
        request = urllib.request.Request(
            url, headers={"User-Agent": "provisioner", **({"Accept": accept} if accept else {})}
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            raise ArtifactError(url, f"the server answered HTTP {exc.code} {exc.reason}", _fix(url)) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ArtifactError(url, f"cannot download: {reason}", _fix(url)) from None

    def read(self, url: str, accept: str = "") -> bytes:
        with self.open(url, accept) as response:
            return response.read()

    def download(self, url: str, dest: Path) -> str:
        """Stream `url` to `dest`; returns the sha256 of what was written."""
        digest = hashlib.sha256()
        with self.open(url) as response, dest.open("wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()


def _fix(url: str) -> str:
    return (
        "check the network or the mirror's layout (see `provisioner artifacts fetch --help`), "
        "or build from source with `provisioner artifacts build`"
    )


def published_sha256(text: str, filename: str, url: str) -> str:
    """The checksum for `filename` in a published checksum file: a bare digest or `sha256sum` lines."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) == 1 and len(lines[0]) == 1:
        digest = lines[0][0]
    else:
        matches = [parts[0] for parts in lines if len(parts) >= 2 and parts[-1].lstrip("*./") == filename]
        if not matches:
            raise ArtifactError(url, f"the checksum file lists no entry for {filename}", "check the mirror")
        digest = matches[0]
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArtifactError(url, f"{digest[:80]!r} is not a sha256 checksum", "check the mirror")
    return digest


@dataclass
class Context:
    aset: ArtifactSet
    bases: Bases
    fetcher: Fetcher
    work: Path


class Unit(ABC):
    component: str
    version: str
    outputs: tuple[str, ...]

    @abstractmethod
    def fetch(self, ctx: Context) -> dict[str, str]:
        """Place every output in the set; returns each output's source URL."""


def _verified_download(ctx: Context, url: str, checksum_url: str, dest: Path) -> None:
    expected = published_sha256(
        ctx.fetcher.read(checksum_url).decode(errors="replace"), url.rsplit("/", 1)[1], checksum_url
    )
    actual = ctx.fetcher.download(url, dest)
    if actual != expected:
        dest.unlink(missing_ok=True)
        raise ArtifactError(
            url,
            f"checksum mismatch: downloaded sha256 {actual}, published {expected} (in {checksum_url})",
            "the file is corrupt or was tampered with; it was discarded. Fix the mirror or retry",
        )


def _install(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o755)
    tmp.replace(dest)


@dataclass
class PlainFiles(Unit):
    """Files published one by one, each with its own checksum file (dl.k8s.io, runc)."""

    component: str
    version: str
    files: dict[str, tuple[str, str]]  # output -> (url, checksum url)

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.files)

    def fetch(self, ctx: Context) -> dict[str, str]:
        for out, (url, checksum_url) in self.files.items():
            tmp = ctx.work / Path(out).name
            _verified_download(ctx, url, checksum_url, tmp)
            _install(tmp, ctx.aset.root / out)
            tmp.unlink()
        return {out: url for out, (url, _) in self.files.items()}


@dataclass
class Archive(Unit):
    """A release tarball with a checksum file; outputs are members found by their base name."""

    component: str
    version: str
    url: str
    checksum_url: str
    members: dict[str, str]  # output -> member base name in the tarball

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.members)

    def fetch(self, ctx: Context) -> dict[str, str]:
        tarball = ctx.work / self.url.rsplit("/", 1)[1]
        _verified_download(ctx, self.url, self.checksum_url, tarball)
        with tarfile.open(tarball) as tar:
            by_name = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for out, name in self.members.items():
                member = by_name.get(name)
                if member is None:
                    raise ArtifactError(self.url, f"the archive holds no file named {name}", "check the mirror")
                handle = tar.extractfile(member)
                assert handle is not None
                extracted = ctx.work / f"{self.component}-{name}"
                with extracted.open("wb") as out_file:
                    shutil.copyfileobj(handle, out_file)
                _install(extracted, ctx.aset.root / out)
                extracted.unlink()
        tarball.unlink()
        return {out: self.url for out in self.members}


@dataclass
class Image(Unit):
    """An image pulled through the OCI distribution API; every blob is checked against its digest."""

    component: str
    version: str
    repository: str  # e.g. "pause", "e2e-test-images/agnhost"
    name: str  # the name it is imported as

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"images/{self.component.removesuffix('-image')}.tar",)

    def fetch(self, ctx: Context) -> dict[str, str]:
        base = f"{ctx.bases.registry}/v2/{self.repository}"
        tag = self.name.rsplit(":", 1)[1]
        top_url = f"{base}/manifests/{tag}"
        top = ctx.fetcher.read(top_url, ACCEPT_MANIFESTS)
        doc = json.loads(top)
        manifest_blob = top
        if "manifests" in doc:  # an index: pick linux/amd64, then fetch and check that manifest
            chosen = [
                m
                for m in doc["manifests"]
                if m.get("platform", {}).get("os") == "linux" and m.get("platform", {}).get("architecture") == "amd64"
            ]
            if not chosen:
                raise ArtifactError(top_url, "the image index has no linux/amd64 manifest", "check the image name")
            manifest_blob = self._blob(ctx, f"{base}/manifests/{chosen[0]['digest']}", chosen[0]["digest"])
            doc = json.loads(manifest_blob)
        blobs = {}
        for ref in [doc["config"], *doc["layers"]]:
            blobs[ref["digest"]] = self._blob(ctx, f"{base}/blobs/{ref['digest']}", ref["digest"])
        images.write_layout(ctx.aset.root / self.outputs[0], self.name, manifest_blob, blobs)
        return {self.outputs[0]: top_url}

    @staticmethod
    def _blob(ctx: Context, url: str, digest: str) -> bytes:
        data = ctx.fetcher.read(url, ACCEPT_MANIFESTS)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactError(
                url,
                f"checksum mismatch: content is {actual}, its digest should be {digest}",
                "the registry or mirror serves corrupt content; it was discarded",
            )
        return data


def units(kubernetes: str, bases: Bases) -> list[Unit]:
    pins = components(kubernetes)
    names = image_names(kubernetes)
    k8s = f"{bases.kubernetes}/{kubernetes}/bin/linux/amd64"
    control = layout.binaries_of("kubernetes")
    gh = bases.github
    etcd_tar = f"etcd-{pins.etcd}-linux-amd64.tar.gz"
    containerd_tar = f"containerd-static-{pins.containerd.lstrip('v')}-linux-amd64.tar.gz"
    cni_tar = f"cni-plugins-linux-amd64-{pins.cni_plugins}.tgz"
    crictl_tar = f"crictl-{pins.crictl}-linux-amd64.tar.gz"
    coredns_tar = f"coredns_{pins.coredns.lstrip('v')}_linux_amd64.tgz"
    etcd_dir = f"{gh}/etcd-io/etcd/releases/download/{pins.etcd}"
    containerd_dir = f"{gh}/containerd/containerd/releases/download/{pins.containerd}"
    runc_dir = f"{gh}/opencontainers/runc/releases/download/{pins.runc}"
    cni_dir = f"{gh}/containernetworking/plugins/releases/download/{pins.cni_plugins}"
    crictl_dir = f"{gh}/kubernetes-sigs/cri-tools/releases/download/{pins.crictl}"
    coredns_dir = f"{gh}/coredns/coredns/releases/download/{pins.coredns}"
    return [
        PlainFiles("kubernetes", kubernetes, {f"bin/{c}": (f"{k8s}/{c}", f"{k8s}/{c}.sha256") for c in control}),
        Image("agnhost", pins.agnhost, "e2e-test-images/agnhost", names["agnhost"]),
        Image("pause", pins.pause, "pause", names["pause"]),
        Image("coredns-image", pins.coredns, "coredns/coredns", names["coredns"]),
        Archive(
            "etcd",
            pins.etcd,
            f"{etcd_dir}/{etcd_tar}",
            f"{etcd_dir}/SHA256SUMS",
            {"bin/etcd": "etcd", "bin/etcdctl": "etcdctl", "bin/etcdutl": "etcdutl"},
        ),
        Archive(
            "containerd",
            pins.containerd,
            f"{containerd_dir}/{containerd_tar}",
            f"{containerd_dir}/{containerd_tar}.sha256sum",
            {
                "bin/containerd": "containerd",
                "bin/ctr": "ctr",
                "bin/containerd-shim-runc-v2": "containerd-shim-runc-v2",
            },
        ),
        PlainFiles("runc", pins.runc, {"bin/runc": (f"{runc_dir}/runc.amd64", f"{runc_dir}/runc.sha256sum")}),
        Archive(
            "cni-plugins",
            pins.cni_plugins,
            f"{cni_dir}/{cni_tar}",
            f"{cni_dir}/{cni_tar}.sha256",
            {f"cni/{p}": p for p in ("bridge", "host-local", "loopback", "portmap")},
        ),
        Archive(
            "crictl",
            pins.crictl,
            f"{crictl_dir}/{crictl_tar}",
            f"{crictl_dir}/{crictl_tar}.sha256",
            {"bin/crictl": "crictl"},
        ),
        Archive(
            "coredns",
            pins.coredns,
            f"{coredns_dir}/{coredns_tar}",
            f"{coredns_dir}/{coredns_tar}.sha256",
            {"bin/coredns": "coredns"},
        ),
    ]


def fetch(aset: ArtifactSet, bus: EventBus, bases: Bases, timeout: float = 30.0) -> ArtifactSet:
    """Download whatever the set lacks. A complete, verified set returns without any network access."""
    waiting = "another build or fetch of this set runs; waiting"
    with (
        Phase(bus, "artifacts", f"fetch {aset.kubernetes_version} into {aset.root}") as phase,
        manifest.locked(aset.root, lambda: phase.progress(waiting)),
    ):
        _fetch_locked(aset, bus, bases, timeout, phase)
    return aset


def _fetch_locked(aset: ArtifactSet, bus: EventBus, bases: Bases, timeout: float, phase: Phase) -> None:
    current = manifest.load(aset.manifest, aset.kubernetes_version)
    problems = manifest.problems(aset.root, current, expected_versions(aset.kubernetes_version))
    todo = [u for u in units(aset.kubernetes_version, bases) if any(out in problems for out in u.outputs)]
    if not todo:
        phase.progress(f"all {len(expected_paths())} files present and verified; nothing to fetch")
        return
    work = aset.root.parent / ".work"
    work.mkdir(parents=True, exist_ok=True)
    current.images = image_names(aset.kubernetes_version)
    fetcher = Fetcher(timeout)
    for unit in todo:
        with (
            Phase(bus, f"fetch {unit.component}", f"{unit.component} {unit.version}"),
            tempfile.TemporaryDirectory(dir=work) as tmp,
        ):
            started = time.monotonic()
            sources = unit.fetch(Context(aset, bases, fetcher, Path(tmp)))
            for out in unit.outputs:
                current.files[out] = manifest.entry_for(aset.root, out, unit.component, unit.version, sources[out])
            manifest.save(current, aset.manifest)
            phase.progress(
                f"{unit.component} {unit.version}: {len(unit.outputs)} file(s) in {time.monotonic() - started:.1f} s"
            )
