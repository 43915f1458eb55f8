"""The build driver: builds only what is missing or altered, records it, and reports failures usefully.

The recipes here are small shell commands standing in for `go build`; what is under test is the
driver's bookkeeping (manifest, checksums, no-op, partial rebuild, failure report), which is the same
for every recipe. tests/build/ runs the real recipes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioner.artifacts import build, layout
from provisioner.artifacts.layout import ArtifactSet
from provisioner.errors import ArtifactError
from provisioner.events import EventBus, PhaseFinished, Progress, Recorder


@dataclass
class ShellRecipe(build.Recipe):
    component: str
    outputs: tuple[str, ...]
    runs: list[str] = field(default_factory=list)
    fail: bool = False
    version: str = "v9.9.9"
    source: str = "example.com/module@v9"

    def build(self, ctx: build.Context) -> None:
        self.runs.append(self.component)
        if self.fail:
            ctx.run(
                ["sh", "-c", "for i in $(seq 1 40); do echo compile line $i; done; echo 'undefined: x' >&2; exit 3"],
                cwd=ctx.work,
            )
        for out in self.outputs:
            path = ctx.aset.root / out
            path.parent.mkdir(parents=True, exist_ok=True)
            ctx.run(["sh", "-c", f"printf 'built %s' {out} > {path}"], cwd=ctx.work)


def _recipes() -> list[ShellRecipe]:
    """One stand-in recipe per pinned version, in the set's order: kubernetes first, cni-plugins second."""
    runs: list[str] = []  # shared: the order in which recipes ran
    groups: dict[str, list[str]] = {}
    for path, version in layout.expected_versions("v1.37.2").items():
        groups.setdefault(version, []).append(path)
    names = {"v1.37.2": "kubernetes", "v1.9.1": "cni-plugins"}
    ordered = sorted(groups, key=lambda v: (v not in names, list(names).index(v) if v in names else 0, v))
    return [ShellRecipe(names.get(v, f"other-{v}"), tuple(groups[v]), runs, version=v) for v in ordered]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[ArtifactSet, list[ShellRecipe]]:
    recipes = _recipes()
    monkeypatch.setattr(build, "recipes", lambda _version: recipes)
    return ArtifactSet(tmp_path / "v1.37.2", "v1.37.2"), recipes


def _runs(recipes: list[ShellRecipe]) -> list[str]:
    return recipes[0].runs


def _bus() -> tuple[EventBus, Recorder]:
    bus, recorder = EventBus(), Recorder()
    bus.subscribe(recorder)
    return bus, recorder


def test_cold_build_records_every_file(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    bus, recorder = _bus()
    build.build(aset, bus)

    doc = json.loads(aset.manifest.read_text())
    assert doc["kubernetes"] == "v1.37.2"
    assert doc["images"]["pause"] == "registry.k8s.io/pause:3.10.2"
    listed = {e["path"]: e for e in doc["files"]}
    assert sorted(listed) == sorted(layout.expected_paths())
    kubelet = listed["bin/kubelet"]
    assert kubelet["component"] == "kubernetes"
    assert kubelet["source"] == "example.com/module@v9"
    assert kubelet["version"] == "v1.37.2"
    assert kubelet["size"] == (aset.root / "bin/kubelet").stat().st_size
    finished = [e.phase for e in recorder.of(PhaseFinished) if isinstance(e, PhaseFinished)]
    assert finished == [f"build {r.component}" for r in recipes] + ["artifacts"]
    assert finished[:2] == ["build kubernetes", "build cni-plugins"]


def test_complete_set_is_a_no_op(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    build.build(aset, EventBus())
    before = aset.manifest.read_bytes()
    bus, recorder = _bus()
    build.build(aset, bus)
    assert _runs(recipes) == [r.component for r in recipes]  # only the first build ran anything
    assert aset.manifest.read_bytes() == before
    messages = [e.message for e in recorder.of(Progress) if isinstance(e, Progress)]
    assert any("nothing to build" in m for m in messages)


def test_missing_file_rebuilds_only_its_component(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    build.build(aset, EventBus())
    (aset.root / "cni/portmap").unlink()
    build.build(aset, EventBus())
    assert _runs(recipes) == [*(r.component for r in recipes), "cni-plugins"]
    assert (aset.root / "cni/portmap").is_file()


def test_altered_file_is_detected_and_rebuilt(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    build.build(aset, EventBus())
    kubelet = aset.root / "bin/kubelet"
    original = kubelet.read_bytes()
    kubelet.write_bytes(original[:-1] + b"X")  # same size, different content
    bus, recorder = _bus()
    build.build(aset, bus)
    assert _runs(recipes)[-1] == "kubernetes"
    assert kubelet.read_bytes() == original
    messages = [e.message for e in recorder.of(Progress) if isinstance(e, Progress)]
    assert "bin/kubelet: sha256 differs from the manifest; rebuilding" in messages


def test_failure_names_component_log_tail_and_log_path(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    recipes[1].fail = True
    with pytest.raises(ArtifactError) as caught:
        build.build(aset, EventBus())
    message = caught.value.message()
    log = aset.root / "logs" / "cni-plugins.log"
    assert message.startswith("artifact cni-plugins v1.9.1: the build failed")
    assert "undefined: x" in message and "compile line 40" in message
    assert "compile line 1\n" not in message  # only the tail, not the whole log
    assert f"the full log is {log}" in message
    assert "compile line 1\n" in log.read_text()
    # what was built before the failure is kept and recorded; a re-run resumes from there
    listed = {e["path"] for e in json.loads(aset.manifest.read_text())["files"]}
    assert "bin/kubelet" in listed and "cni/bridge" not in listed
    recipes[1].fail = False
    build.build(aset, EventBus())
    assert _runs(recipes) == ["kubernetes", "cni-plugins", "cni-plugins", *(r.component for r in recipes[2:])]


def test_file_from_another_pin_is_rebuilt(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    build.build(aset, EventBus())
    etcd = next(r for r in recipes if "bin/etcd" in r.outputs)
    etcd.version = "v3.6.99"  # as if versions.py moved etcd to a new patch release
    pinned = layout.expected_versions
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "expected_versions", lambda v: {**pinned(v), "bin/etcd": "v3.6.99", "bin/etcdctl": "v3.6.99"})
        bus, recorder = _bus()
        build.build(aset, bus)
    assert _runs(recipes)[-1] == etcd.component
    messages = [e.message for e in recorder.of(Progress) if isinstance(e, Progress)]
    assert "bin/etcd: is version v3.6.16, the pin is v3.6.99; rebuilding" in messages


def test_long_step_reports_that_it_is_alive(
    fake: tuple[ArtifactSet, list[ShellRecipe]], monkeypatch: pytest.MonkeyPatch
) -> None:
    aset, recipes = fake
    monkeypatch.setattr(build, "HEARTBEAT_SECONDS", 0.2)
    slow = recipes[0]
    original = slow.build

    def slow_build(ctx: build.Context) -> None:
        ctx.run(["sh", "-c", "for p in a b c; do echo k8s.io/pkg/$p >&2; sleep 0.3; done"], cwd=ctx.work)
        original(ctx)

    monkeypatch.setattr(slow, "build", slow_build)
    bus, recorder = _bus()
    build.build(aset, bus)
    alive = [e for e in recorder.of(Progress) if isinstance(e, Progress) and "still building" in e.message]
    assert alive and all(e.phase == "build kubernetes" for e in alive)
    assert alive[-1].message.endswith("packages so far")
