"""The usual conveniences of the command line: --version, -h, destroy asking first, the spec it picked; and
`secrets rotate-key` asking first, its summary and its errors (the rotation itself: test_encryption.py)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
from simcluster import SimCluster
from typer.testing import CliRunner

from provisioner import cli, encryption, lifecycle, paths
from provisioner.events import EventBus


def test_version_and_short_help() -> None:
    runner = CliRunner()
    version = runner.invoke(cli.app, ["--version"])
    assert (
        version.exit_code == 0 and version.output.strip() == f"provisioner {importlib.metadata.version('provisioner')}"
    )
    for args in (["-h"], ["up", "-h"], ["destroy", "-h"]):
        shown = runner.invoke(cli.app, args)
        assert shown.exit_code == 0 and "Usage:" in shown.output, args
    assert "--install-completion" in runner.invoke(cli.app, ["--help"]).output


@pytest.mark.parametrize(
    ("args", "answer", "destroyed"), [([], "n\n", False), ([], "y\n", True), (["--yes"], "", True)]
)
def test_destroy_asks_before_it_deletes_unless_yes(
    monkeypatch: pytest.MonkeyPatch, args: list[str], answer: str, destroyed: bool
) -> None:
    called: list[str] = []
    monkeypatch.setattr(lifecycle, "destroy", lambda cluster, *a, **k: called.append(cluster.name))
    result = CliRunner().invoke(cli.app, ["destroy", "--spec", str(paths.default_spec()), *args], input=answer)
    assert called == (["lab"] if destroyed else [])
    assert result.exit_code == (0 if destroyed else 1), result.output
    if not args:
        assert "destroy cluster lab: its machines, its PKI and kubeconfig?" in result.output


def test_a_verb_without_spec_outside_the_repository_names_the_spec_it_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.chdir(paths.REPO_ROOT)
    inside = runner.invoke(cli.app, ["validate"])
    assert inside.exit_code == 0 and "the default lab; pass --spec FILE" not in inside.output
    monkeypatch.chdir(tmp_path)
    outside = runner.invoke(cli.app, ["validate"])
    assert outside.exit_code == 0
    assert f"spec: {paths.default_spec()} (the default lab; pass --spec FILE for another)" in outside.output


# --- secrets rotate-key ----------------------------------------------------------------------------------


@pytest.fixture
def lab_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default lab's PKI directory under a temporary state root, with a simulated cluster behind it."""
    monkeypatch.setenv("PROVISIONER_STATE", str(tmp_path / "state"))
    pki_dir = tmp_path / "state" / "lab" / "pki"
    pki_dir.mkdir(parents=True)
    encryption.ensure_config(pki_dir)
    sims: list[SimCluster] = []

    def connect(cluster: Any, state: Any, bus: EventBus) -> SimCluster:
        sims.append(SimCluster(state.pki_dir, busy_writer=False))
        return sims[-1]

    monkeypatch.setattr(encryption, "LiveCluster", connect)
    monkeypatch.setattr(encryption, "WAIT_SECONDS", 5.0)
    monkeypatch.setattr(encryption, "POLL_SECONDS", 0.0)
    return pki_dir


def _cli(*args: str, answer: str = "") -> Any:
    return CliRunner().invoke(
        cli.app, ["secrets", "rotate-key", "--spec", str(paths.default_spec()), *args], input=answer
    )


@pytest.mark.parametrize(("args", "answer", "rotated"), [([], "n\n", False), ([], "y\n", True), (["--yes"], "", True)])
def test_the_command_asks_before_it_rotates_unless_yes(
    lab_state: Path, args: list[str], answer: str, rotated: bool
) -> None:
    before = encryption.config_path(lab_state).read_bytes()
    result = _cli(*args, answer=answer)
    assert result.exit_code == (0 if rotated else 1), result.output
    asked = "rotate cluster lab's Secret encryption key: a new key key2 on master, every Secret written again with it"
    assert (asked in result.output) == (not args)
    if rotated:
        assert encryption.key_names(encryption.read_config(lab_state), "test") == ["key2"]
        assert "key1 -> key2: 3 Secret(s) written again with key2; key1 is gone from every master's" in result.output
        assert "remove key1" in result.output  # the steps' table
    else:
        assert encryption.config_path(lab_state).read_bytes() == before
        assert not encryption.record_path(lab_state).exists()


def test_the_command_asks_to_resume_a_rotation_that_was_stopped(lab_state: Path) -> None:
    encryption.write_record(lab_state, encryption.Rotation("key1", "key2"))
    result = _cli(answer="n\n")
    assert "resume rotating cluster lab's Secret encryption key key1 -> key2 (next: add the new key)?" in result.output


def test_the_command_on_a_cluster_never_brought_up_says_so_before_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_STATE", str(tmp_path / "state"))
    result = _cli(answer="y\n")
    assert result.exit_code == 1
    assert "error: " in result.output and "encryption-config.yaml: does not exist" in result.output
    assert "`provisioner up`" in result.output and "rotate cluster" not in result.output
    # A PKI but no machines (the real LiveCluster): told before the question too.
    pki_dir = tmp_path / "state" / "lab" / "pki"
    pki_dir.mkdir(parents=True)
    encryption.ensure_config(pki_dir)
    result = _cli(answer="y\n")
    assert result.exit_code == 1 and "rotate cluster" not in result.output
    assert "has no generated inventory, host list or admin kubeconfig" in result.output
    assert "bring it up first with `provisioner up`" in result.output


def test_a_step_that_fails_exits_1_with_its_message(lab_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never_reloads(cluster: Any, state: Any, bus: EventBus) -> SimCluster:
        return SimCluster(state.pki_dir, reload_after={"master": 10**6})

    monkeypatch.setattr(encryption, "LiveCluster", never_reloads)
    monkeypatch.setattr(encryption, "WAIT_SECONDS", 0.1)
    result = _cli("--yes")
    assert result.exit_code == 1
    assert "error: rotation key1 -> key2: waited 0s for the apiserver on master to load the config" in result.output
    assert "it resumes at this step" in result.output
    assert encryption.record_path(lab_state).exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "nothing to scale"),
        (["--masters", "2"], "--masters: 2 is not a supported master count"),
        (["--masters", "3", "--workers", "0"], "--workers"),
    ],
)
def test_scale_refuses_bad_counts_before_anything_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], said: str
) -> None:
    monkeypatch.setenv("PROVISIONER_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(lifecycle, "up", lambda *a, **k: pytest.fail("up must not run"))
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(paths.default_spec().read_text())
    before = spec_file.read_text()
    result = CliRunner().invoke(cli.app, ["scale", "--spec", str(spec_file), *args])
    assert result.exit_code != 0
    assert said in result.output, result.output
    assert spec_file.read_text() == before
