"""`provisioner artifacts path|verify|mirror|fetch` as a user runs them (the group on its own)."""

from __future__ import annotations

from pathlib import Path

# pytest puts this directory on sys.path (rootdir-relative "prepend" imports): share the fixtures' set
from test_artifacts_fetch import VERSION, Server, make_set
from typer.testing import CliRunner

from provisioner.cli.artifacts import app
from provisioner.layout import ARTIFACTS

runner = CliRunner()


def test_path_prints_the_versioned_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["path", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / VERSION)


def test_verify_lists_each_altered_or_missing_file(tmp_path: Path) -> None:
    aset = make_set(tmp_path / VERSION)
    result = runner.invoke(app, ["verify", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"ok: {len(ARTIFACTS)} files match" in result.stdout

    (aset.root / "bin/runc").write_bytes(b"not runc")
    (aset.root / "images/pause.tar").unlink()
    result = runner.invoke(app, ["verify", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"2 of {len(ARTIFACTS)} files are not as the manifest says" in result.output
    assert "bin/runc: size" in result.output
    assert "images/pause.tar: missing" in result.output
    assert "provisioner artifacts build" in result.output


def test_mirror_then_fetch_with_mirror_option(tmp_path: Path) -> None:
    make_set(tmp_path / "built" / VERSION)
    result = runner.invoke(app, ["mirror", str(tmp_path / "www"), "--cache-dir", str(tmp_path / "built")])
    assert result.exit_code == 0, result.output
    server = Server(tmp_path / "www")
    try:
        result = runner.invoke(app, ["fetch", "--cache-dir", str(tmp_path / "got"), "--mirror", server.url])
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "got" / VERSION)
    result = runner.invoke(app, ["verify", "--cache-dir", str(tmp_path / "got")])
    assert result.exit_code == 0, result.output
