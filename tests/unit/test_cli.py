"""The usual conveniences of the command line: --version, -h, destroy asking first, the spec it picked."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner import cli, lifecycle, paths


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
