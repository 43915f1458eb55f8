"""Build the artifact set from source: Go modules through the module proxy, pause.c with gcc.

Each component is one recipe. A recipe runs only when one of its outputs is missing from the
manifest, missing on disk, or no longer matches its checksum, so a complete set costs no Go call.
Every tool's output goes to `<set>/logs/<component>.log`; a failure quotes its tail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from provisioner import layout
from provisioner.artifacts import gowrap, images, manifest
from provisioner.artifacts.layout import ArtifactSet, expected_paths, expected_versions, image_names
from provisioner.errors import ArtifactError, ToolMissing
from provisioner.events import EventBus, Phase, Progress
from provisioner.versions import ComponentSet, components

LOG_TAIL_LINES = 25
HEARTBEAT_SECONDS = 60.0
GO_FALLBACK = Path("/usr/local/go/bin/go")
WRAPPER_PREFIX = "provisioner.local/artifacts"


@dataclass
class Context:
    """What every recipe needs: where to write, where to work, which Go, and the open log."""

    aset: ArtifactSet
    work: Path
    go: Path
    env: dict[str, str]
    log: IO[str] | None = None
    log_path: Path | None = None
    heartbeat: Callable[[float, int], None] | None = None

    def run(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, capture: bool = False) -> str:
        """Run a command with its output in the log; returns stdout when `capture` (stderr still logged).

        While it runs, `heartbeat` hears every HEARTBEAT_SECONDS how long it has run and how many lines
        the log gained (with `go build -v`, one per package compiled): a long build is visibly alive.
        A non-zero exit raises _StepFailed, which the driver turns into an ArtifactError quoting the log.
        """
        assert self.log is not None and self.log_path is not None
        self.log.write(f"\n$ (cd {cwd} && {' '.join(argv)})\n")
        self.log.flush()
        start_size = self.log_path.stat().st_size
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env or self.env,
            stdout=subprocess.PIPE if capture else self.log,
            stderr=self.log,
            text=True,
        )
        if capture:
            stdout, _ = proc.communicate()
        else:
            stdout = ""
            while True:
                try:
                    proc.wait(timeout=HEARTBEAT_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if self.heartbeat is not None:
                        self.heartbeat(time.monotonic() - started, self._lines_since(start_size))
        self.log.flush()
        if proc.returncode != 0:
            command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:2]))
            raise _StepFailed(f"`{command}` exited {proc.returncode}")
        return stdout

    def _lines_since(self, offset: int) -> int:
        assert self.log_path is not None
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            return sum(1 for line in handle if not line.startswith(b"go: "))


class _StepFailed(Exception):
    pass


@dataclass(frozen=True)
class ModuleInfo:
    dir: Path
    gomod: Path
    time: str  # the release's commit time, from the proxy's .info: a fixed, honest build date


def module_info(ctx: Context, module: str, version: str) -> ModuleInfo:
    out = ctx.run([str(ctx.go), "mod", "download", "-json", f"{module}@{version}"], cwd=ctx.work, capture=True)
    doc = json.loads(out)
    info = json.loads(Path(doc["Info"]).read_text(encoding="utf-8"))
    return ModuleInfo(Path(doc["Dir"]), Path(doc["GoMod"]), str(info.get("Time", "1970-01-01T00:00:00Z")))


# --- recipes ---------------------------------------------------------------------------------------


class Recipe(ABC):
    component: str
    version: str
    source: str
    outputs: tuple[str, ...]

    @abstractmethod
    def build(self, ctx: Context) -> None:
        """Write every output under ctx.aset.root (replacing what is there)."""


@dataclass(frozen=True)
class GoTarget:
    """One `go build` invocation: packages and the names their binaries get."""

    binaries: dict[str, str]  # output path relative to the destination -> package import path
    tags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    cgo: bool = False


@dataclass
class GoRecipe(Recipe):
    """Programs of a Go module built through a wrapper module (see gowrap), statically, trimmed, stamped."""

    component: str
    version: str
    requires: dict[str, str]
    targets: list[GoTarget]
    sibling_version: Callable[[str], str]
    stamp: Callable[[ModuleInfo], list[str]] = field(default=lambda _info: [])
    wrapper: str = ""  # recipes naming the same wrapper share its go.mod/go.sum (kubernetes, agnhost)

    @property
    def main_module(self) -> str:
        return next(iter(self.requires))

    @property
    def source(self) -> str:  # type: ignore[override]
        return f"{self.main_module}@{self.requires[self.main_module]}"

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(out for t in self.targets for out in t.binaries)

    def prepare(self, ctx: Context) -> tuple[Path, ModuleInfo]:
        """Write the wrapper module; returns its directory and the main module's info."""
        wrapper = ctx.work / (self.wrapper or f"{self.component}-{self.version}")
        wrapper.mkdir(parents=True, exist_ok=True)
        infos = {m: module_info(ctx, m, v) for m, v in self.requires.items()}
        upstream = [gowrap.parse(i.gomod.read_text(encoding="utf-8")) for i in infos.values()]
        name = f"{WRAPPER_PREFIX}/{wrapper.name}"
        text = gowrap.render(name, self.requires, upstream, self.sibling_version)
        (wrapper / "go.mod").write_text(text, encoding="utf-8")
        return wrapper, infos[self.main_module]

    def build(self, ctx: Context) -> None:
        self.build_into(ctx, ctx.aset.root)

    def build_into(self, ctx: Context, dest: Path) -> ModuleInfo:
        wrapper, info = self.prepare(ctx)
        for target in self.targets:
            env = dict(ctx.env, CGO_ENABLED="1" if target.cgo else "0")
            with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
                ldflags = ["-s", "-w", *self.stamp(info), *target.ldflags]
                argv = [str(ctx.go), "build", "-v", "-trimpath", "-o", tmp + "/"]
                if target.tags:
                    argv += ["-tags", ",".join(target.tags)]
                argv += ["-ldflags", " ".join(ldflags), *target.binaries.values()]
                ctx.run(argv, cwd=wrapper, env=env)
                for out, package in target.binaries.items():
                    final = dest / out
                    final.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(Path(tmp) / default_binary_name(package), final)
        return info


def default_binary_name(package: str) -> str:
    """The file name `go build -o DIR` gives a main package: its last element, minus a /vN suffix."""
    parts = package.split("/")
    if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1:
        return parts[-2]
    return parts[-1]


@dataclass
class AgnhostRecipe(Recipe):
    """The e2e test image: agnhost built from the Kubernetes module, as an OCI archive."""

    go: GoRecipe
    image: str
    expected_version: str
    component: str = "agnhost"
    outputs: tuple[str, ...] = ("images/agnhost.tar",)

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.expected_version

    @property
    def source(self) -> str:  # type: ignore[override]
        return f"{self.go.source}/test/images/agnhost"

    def build(self, ctx: Context) -> None:
        staging = ctx.work / f"agnhost-{self.go.version}"
        info = self.go.build_into(ctx, staging)
        declared = (info.dir / "test/images/agnhost/VERSION").read_text(encoding="utf-8").strip()
        if declared != self.expected_version:
            raise _PinMismatch("agnhost", self.expected_version, declared, "test/images/agnhost/VERSION")
        images.write_image(
            ctx.aset.root / self.outputs[0],
            self.image,
            [images.FileSpec("agnhost", staging / "agnhost")],
            entrypoint=["/agnhost"],
            cmd=["pause"],
            dirs={"tmp": 0o1777, "etc": 0o755},
        )


@dataclass
class PauseRecipe(Recipe):
    """The sandbox image: build/pause/linux/pause.c of the Kubernetes module, compiled statically."""

    kubernetes: str
    image: str
    expected_version: str
    component: str = "pause"
    outputs: tuple[str, ...] = ("images/pause.tar",)

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.expected_version

    @property
    def source(self) -> str:  # type: ignore[override]
        return f"k8s.io/kubernetes@{self.kubernetes}/build/pause/linux/pause.c"

    def build(self, ctx: Context) -> None:
        cc = shutil.which("gcc")
        if cc is None:
            raise ToolMissing("gcc", "the pause image and runc are compiled C", "install gcc and libc6-dev")
        info = module_info(ctx, "k8s.io/kubernetes", self.kubernetes)
        makefile = (info.dir / "build/pause/Makefile").read_text(encoding="utf-8")
        tag = re.search(r"^TAG \?= (\S+)$", makefile, re.MULTILINE)
        declared = tag.group(1) if tag else "(none)"
        if declared != self.expected_version:
            raise _PinMismatch("pause", self.expected_version, declared, "build/pause/Makefile")
        binary = ctx.work / f"pause-{self.kubernetes}"
        # the flags of build/pause/Makefile; REV (a git describe there) is the Kubernetes tag here
        version = f"v{self.expected_version}-{self.kubernetes}"
        source = info.dir / "build/pause/linux/pause.c"
        ctx.run(
            [cc, "-Os", "-Wall", "-Werror", "-static", f"-DVERSION={version}", "-o", str(binary), str(source)],
            cwd=ctx.work,
        )
        images.write_image(
            ctx.aset.root / self.outputs[0], self.image, [images.FileSpec("pause", binary)], entrypoint=["/pause"]
        )


@dataclass
class ImageRecipe(Recipe):
    """An image holding one binary of the set (CoreDNS runs as a pod from bin/coredns)."""

    component: str
    version: str
    binary: str  # path in the set, built by an earlier recipe
    image: str
    source: str

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"images/{self.component.removesuffix('-image')}.tar",)

    def build(self, ctx: Context) -> None:
        name = Path(self.binary).name
        images.write_image(
            ctx.aset.root / self.outputs[0],
            self.image,
            [images.FileSpec(name, ctx.aset.root / self.binary)],
            entrypoint=[f"/{name}"],
        )


class _PinMismatch(Exception):
    def __init__(self, what: str, pinned: str, declared: str, where: str) -> None:
        super().__init__(
            f"{what} is pinned to {pinned} in provisioner/versions.py but the Kubernetes module's {where} "
            f"says {declared}; set the pin to {declared}"
        )


def _kubernetes_stamp(version: str) -> Callable[[ModuleInfo], list[str]]:
    major, minor, _ = version.lstrip("v").split(".")

    def stamp(info: ModuleInfo) -> list[str]:
        # the keys hack/lib/version.sh stamps; "archive" is its tree state for a non-git source tree.
        # The module proxy does not say which commit a tag is, so gitCommit is left empty rather than
        # keeping the source's unexpanded "$Format:%H$" placeholder.
        values = {
            "gitVersion": version,
            "gitCommit": "",
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "archive",
            "buildDate": info.time,
        }
        return [
            f"-X {pkg}.{key}={value}"
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
            for key, value in values.items()
        ]

    return stamp


def recipes(kubernetes: str) -> list[Recipe]:
    """Every component of the set for one Kubernetes release, heaviest (and most shared) first."""
    pins: ComponentSet = components(kubernetes)
    names = image_names(kubernetes)
    k8s = {"k8s.io/kubernetes": kubernetes}
    staging = gowrap.kubernetes_staging_version(kubernetes)
    kube_stamp = _kubernetes_stamp(kubernetes)
    kube_tags = ("selinux", "notest")
    control = layout.binaries_of("kubernetes")
    wrapper = f"kubernetes-{kubernetes}"
    static = ("osusergo", "netgo")
    containerd_x = "github.com/containerd/containerd/v2/version"
    containerd_stamp = (f"-X {containerd_x}.Version={pins.containerd}", f"-X {containerd_x}.Revision=")
    return [
        GoRecipe(
            "kubernetes",
            kubernetes,
            k8s,
            [GoTarget({f"bin/{c}": f"k8s.io/kubernetes/cmd/{c}" for c in control}, kube_tags)],
            staging,
            kube_stamp,
            wrapper,
        ),
        AgnhostRecipe(
            GoRecipe(
                "agnhost",
                kubernetes,
                k8s,
                [
                    GoTarget(
                        {"agnhost": "k8s.io/kubernetes/test/images/agnhost"},
                        kube_tags,
                        (f"-X main.Version={pins.agnhost}",),
                    )
                ],
                staging,
                kube_stamp,
                wrapper,
            ),
            names["agnhost"],
            pins.agnhost,
        ),
        PauseRecipe(kubernetes, names["pause"], pins.pause),
        GoRecipe(
            "etcd",
            pins.etcd,
            {
                "go.etcd.io/etcd/server/v3": pins.etcd,
                "go.etcd.io/etcd/etcdctl/v3": pins.etcd,
                "go.etcd.io/etcd/etcdutl/v3": pins.etcd,
            },
            [
                GoTarget(
                    {
                        "bin/etcd": "go.etcd.io/etcd/server/v3",
                        "bin/etcdctl": "go.etcd.io/etcd/etcdctl/v3",
                        "bin/etcdutl": "go.etcd.io/etcd/etcdutl/v3",
                    }
                )
            ],
            gowrap.same_version(pins.etcd),
        ),
        GoRecipe(
            "containerd",
            pins.containerd,
            {"github.com/containerd/containerd/v2": pins.containerd},
            [
                GoTarget(
                    {
                        "bin/containerd": "github.com/containerd/containerd/v2/cmd/containerd",
                        "bin/ctr": "github.com/containerd/containerd/v2/cmd/ctr",
                    },
                    ("urfave_cli_no_docs", *static, "static_build"),
                    containerd_stamp,
                ),
                # the Makefile builds the shim without gRPC (ttrpc only) to keep it small
                GoTarget(
                    {"bin/containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"},
                    ("urfave_cli_no_docs", *static, "static_build", "no_grpc"),
                    containerd_stamp,
                ),
            ],
            gowrap.same_version(pins.containerd),
        ),
        GoRecipe(
            "runc",
            pins.runc,
            {"github.com/opencontainers/runc": pins.runc},
            # runc's nsenter is C: cgo is required; linked statically against libseccomp.a so it runs on
            # any glibc. libpathrs (a Rust library) is left out: runc falls back to its Go path handling.
            [
                GoTarget(
                    {"bin/runc": "github.com/opencontainers/runc"},
                    ("seccomp", "urfave_cli_no_docs", *static),
                    ("-X main.gitCommit=", "-linkmode external", "-extldflags -static"),
                    cgo=True,
                )
            ],
            gowrap.same_version(pins.runc),
        ),
        GoRecipe(
            "cni-plugins",
            pins.cni_plugins,
            {"github.com/containernetworking/plugins": pins.cni_plugins},
            [
                GoTarget(
                    {
                        "cni/bridge": "github.com/containernetworking/plugins/plugins/main/bridge",
                        "cni/host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
                        "cni/loopback": "github.com/containernetworking/plugins/plugins/main/loopback",
                        "cni/portmap": "github.com/containernetworking/plugins/plugins/meta/portmap",
                    },
                    ldflags=(
                        "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion="
                        + pins.cni_plugins,
                    ),
                )
            ],
            gowrap.same_version(pins.cni_plugins),
        ),
        GoRecipe(
            "crictl",
            pins.crictl,
            {"sigs.k8s.io/cri-tools": pins.crictl},
            [
                GoTarget(
                    {"bin/crictl": "sigs.k8s.io/cri-tools/cmd/crictl"},
                    ldflags=(f"-X sigs.k8s.io/cri-tools/pkg/version.Version={pins.crictl}",),
                )
            ],
            gowrap.same_version(pins.crictl),
        ),
        GoRecipe(
            "coredns",
            pins.coredns,
            {"github.com/coredns/coredns": pins.coredns},
            [GoTarget({"bin/coredns": "github.com/coredns/coredns"})],
            gowrap.same_version(pins.coredns),
        ),
        ImageRecipe(
            "coredns-image", pins.coredns, "bin/coredns", names["coredns"], f"github.com/coredns/coredns@{pins.coredns}"
        ),
    ]


# --- driver ----------------------------------------------------------------------------------------


def find_go() -> Path:
    found = shutil.which("go")
    if found:
        return Path(found)
    if GO_FALLBACK.exists():
        return GO_FALLBACK
    raise ToolMissing(
        "go", "the Go toolchain is needed to build artifacts", "install Go 1.26 (go.dev/dl) or use --source release"
    )


def go_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the user's own Go caches win; otherwise they live beside the artifacts, outside any repository
    env.setdefault("GOMODCACHE", str(cache_dir / ".go" / "mod"))
    env.setdefault("GOCACHE", str(cache_dir / ".go" / "build"))
    env["GOTOOLCHAIN"] = "local"  # never download another toolchain behind the user's back
    env["GOWORK"] = "off"
    env["GOFLAGS"] = "-buildvcs=false -mod=mod"  # -mod=mod: the wrapper's go.sum fills itself
    env["GOOS"], env["GOARCH"] = "linux", "amd64"
    return env


def stale(aset: ArtifactSet, recipe_list: list[Recipe]) -> tuple[manifest.Manifest, list[Recipe], dict[str, str]]:
    """The manifest, the recipes with a missing or altered output, and what is wrong per file."""
    current = manifest.load(aset.manifest, aset.kubernetes_version)
    problems = manifest.problems(aset.root, current, expected_versions(aset.kubernetes_version))
    todo = [r for r in recipe_list if any(out in problems for out in r.outputs)]
    # an image made from a binary of the set is remade whenever that binary is
    rebuilt = {out for r in todo for out in r.outputs}
    todo = [r for r in recipe_list if r in todo or (isinstance(r, ImageRecipe) and r.binary in rebuilt)]
    return current, todo, problems


def build(aset: ArtifactSet, bus: EventBus) -> ArtifactSet:
    """Build whatever the set lacks. A complete, verified set returns without running any tool."""
    waiting = "another build or fetch of this set runs; waiting"
    with (
        Phase(bus, "artifacts", f"build {aset.kubernetes_version} in {aset.root}") as phase,
        manifest.locked(aset.root, lambda: phase.progress(waiting)),
    ):
        _build_locked(aset, bus, phase)
    return aset


def _build_locked(aset: ArtifactSet, bus: EventBus, phase: Phase) -> None:
    all_recipes = recipes(aset.kubernetes_version)
    current, todo, problems = stale(aset, all_recipes)
    if not todo:
        phase.progress(f"all {len(expected_paths())} files present and verified; nothing to build")
        return
    for rel, what in sorted(problems.items()):
        if what != "not in the manifest" or rel in current.files:
            phase.progress(f"{rel}: {what}; rebuilding")
    cache_dir = aset.root.parent
    work = cache_dir / ".work"
    work.mkdir(parents=True, exist_ok=True)
    aset.logs.mkdir(parents=True, exist_ok=True)
    ctx = Context(aset, work, find_go(), go_env(cache_dir))
    current.images = image_names(aset.kubernetes_version)
    for recipe in todo:
        _run_recipe(ctx, recipe, current, bus)


def _run_recipe(ctx: Context, recipe: Recipe, current: manifest.Manifest, bus: EventBus) -> None:
    log_path = ctx.aset.logs / f"{recipe.component}.log"
    phase_name = f"build {recipe.component}"

    def heartbeat(seconds: float, lines: int) -> None:
        bus.emit(Progress(phase_name, f"still building after {seconds / 60:.0f} min; {lines} packages so far"))

    with Phase(bus, phase_name, f"{recipe.component} {recipe.version} from {recipe.source}"):
        with log_path.open("w", encoding="utf-8") as log:
            ctx.log, ctx.log_path, ctx.heartbeat = log, log_path, heartbeat
            try:
                recipe.build(ctx)
            except _StepFailed as exc:
                log.flush()
                raise ArtifactError(
                    f"artifact {recipe.component} {recipe.version}",
                    f"the build failed: {exc}. Last lines of its log:\n{_tail(log_path)}",
                    f"the full log is {log_path}",
                ) from None
            except _PinMismatch as exc:
                raise ArtifactError(f"artifact {recipe.component}", str(exc)) from None
            finally:
                ctx.log = None
        for out in recipe.outputs:
            current.files[out] = manifest.entry_for(ctx.aset.root, out, recipe.component, recipe.version, recipe.source)
        # saved after every component, so an interrupted build resumes where it stopped
        manifest.save(current, ctx.aset.manifest)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])
