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
    source: str = "example.com/module@v9.9.9"

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
    paths = layout.expected_paths()
    runs: list[str] = []  # shared: the order in which recipes ran
    return [
        ShellRecipe("kubernetes", tuple(p for p in paths if p.startswith("bin/kube")), runs),
        ShellRecipe("cni-plugins", tuple(p for p in paths if p.startswith("cni/")), runs),
        ShellRecipe("rest", tuple(p for p in paths if not p.startswith(("bin/kube", "cni/"))), runs),
    ]


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
    aset, _ = fake
    bus, recorder = _bus()
    build.build(aset, bus)

    doc = json.loads(aset.manifest.read_text())
    assert doc["kubernetes"] == "v1.37.2"
    assert doc["images"]["pause"] == "registry.k8s.io/pause:3.10.2"
    listed = {e["path"]: e for e in doc["files"]}
    assert sorted(listed) == sorted(layout.expected_paths())
    kubelet = listed["bin/kubelet"]
    assert kubelet["component"] == "kubernetes"
    assert kubelet["source"] == "example.com/module@v9.9.9"
    assert kubelet["size"] == (aset.root / "bin/kubelet").stat().st_size
    finished = [e.phase for e in recorder.of(PhaseFinished) if isinstance(e, PhaseFinished)]
    assert finished == ["build kubernetes", "build cni-plugins", "build rest", "artifacts"]


def test_complete_set_is_a_no_op(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    build.build(aset, EventBus())
    before = aset.manifest.read_bytes()
    bus, recorder = _bus()
    build.build(aset, bus)
    assert _runs(recipes) == ["kubernetes", "cni-plugins", "rest"]  # only the first build ran anything
    assert aset.manifest.read_bytes() == before
    messages = [e.message for e in recorder.of(Progress) if isinstance(e, Progress)]
    assert any("nothing to build" in m for m in messages)


def test_missing_file_rebuilds_only_its_component(fake: tuple[ArtifactSet, list[ShellRecipe]]) -> None:
    aset, recipes = fake
    build.build(aset, EventBus())
    (aset.root / "cni/portmap").unlink()
    build.build(aset, EventBus())
    assert _runs(recipes) == ["kubernetes", "cni-plugins", "rest", "cni-plugins"]
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
    assert message.startswith("artifact cni-plugins v9.9.9: the build failed")
    assert "undefined: x" in message and "compile line 40" in message
    assert "compile line 1\n" not in message  # only the tail, not the whole log
    assert f"the full log is {log}" in message
    assert "compile line 1\n" in log.read_text()
    # what was built before the failure is kept and recorded; a re-run resumes from there
    listed = {e["path"] for e in json.loads(aset.manifest.read_text())["files"]}
    assert "bin/kubelet" in listed and "cni/bridge" not in listed
    recipes[1].fail = False
    build.build(aset, EventBus())
    assert _runs(recipes) == ["kubernetes", "cni-plugins", "cni-plugins", "rest"]
