"""The admin machine after `up`: the merged context, its removal, the kubectl link (the loopback forwarder:
test_forwarder.py)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import yaml
from pytest import MonkeyPatch
from typer.testing import CliRunner

from provisioner import admin, cli, paths, pki, spec
from provisioner.errors import ProvisionerError
from provisioner.state import State

OTHER = {
    "apiVersion": "v1",
    "kind": "Config",
    "preferences": {},
    "clusters": [{"name": "prod", "cluster": {"server": "https://prod:6443"}}],
    # A user of another cluster with the name our admin kubeconfig uses inside the lab: must survive.
    "users": [{"name": "admin", "user": {"token": "x"}}],
    "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "admin"}}],
    "current-context": "prod",
}


@pytest.fixture
def state(tmp_path: Path) -> State:
    cluster = spec.load(paths.default_spec())
    state = State(tmp_path / "state").ensure()
    pki.ensure(cluster, state)
    state.kubeconfig.write_bytes((state.pki_dir / "kubeconfigs" / "admin.kubeconfig").read_bytes())
    admin.write_user_kubeconfig(state, "lab", "https://127.0.0.1:40123")
    return state


def test_user_kubeconfig_names_the_cluster_and_the_loopback_server(state: State) -> None:
    doc = yaml.safe_load(state.user_kubeconfig.read_text())
    assert doc["clusters"][0] == {**doc["clusters"][0], "name": "lab"}
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:40123"
    assert [u["name"] for u in doc["users"]] == ["admin@lab"]
    assert doc["contexts"] == [{"name": "lab", "context": {"cluster": "lab", "user": "admin@lab"}}]
    assert stat.S_IMODE(state.user_kubeconfig.stat().st_mode) == 0o600


def test_merge_then_unmerge_leaves_an_existing_kubeconfig_as_it_was(state: State, tmp_path: Path) -> None:
    target = tmp_path / "home" / ".kube" / "config"
    target.parent.mkdir(parents=True)
    target.write_text(yaml.safe_dump(OTHER, sort_keys=False))
    target.chmod(0o644)

    admin.merge(state, "lab", target)
    admin.merge(state, "lab", target)  # every `up` merges again: refreshed, not duplicated
    merged = yaml.safe_load(target.read_text())
    assert [c["name"] for c in merged["contexts"]] == ["prod", "lab"]
    assert [u["name"] for u in merged["users"]] == ["admin", "admin@lab"]
    assert merged["current-context"] == "lab"  # the first merge switches to the new cluster, like kind
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # it holds our key now

    assert admin.unmerge(state, "lab") == target
    assert yaml.safe_load(target.read_text()) == OTHER
    assert not state.merged_file.exists()


def test_a_later_merge_keeps_the_context_the_user_switched_to(state: State, tmp_path: Path) -> None:
    target = tmp_path / "config"
    target.write_text(yaml.safe_dump(OTHER))
    admin.merge(state, "lab", target)
    doc = yaml.safe_load(target.read_text())
    doc["current-context"] = "prod"
    target.write_text(yaml.safe_dump(doc))
    admin.merge(state, "lab", target)
    assert yaml.safe_load(target.read_text())["current-context"] == "prod"
    admin.unmerge(state, "lab")
    assert yaml.safe_load(target.read_text()) == OTHER


def test_a_kubeconfig_that_merge_created_goes_again(state: State, tmp_path: Path) -> None:
    target = tmp_path / "nothing-here" / "config"
    admin.merge(state, "lab", target)
    assert yaml.safe_load(target.read_text())["current-context"] == "lab"
    admin.unmerge(state, "lab")
    assert not target.exists()


def test_an_empty_kubeconfig_stays_empty(state: State, tmp_path: Path) -> None:
    target = tmp_path / "config"
    target.write_text("")
    admin.merge(state, "lab", target)
    admin.unmerge(state, "lab")
    assert target.read_text() == ""


def test_entries_the_user_added_meanwhile_stay(state: State, tmp_path: Path) -> None:
    target = tmp_path / "config"
    admin.merge(state, "lab", target)
    doc = yaml.safe_load(target.read_text())
    doc["contexts"].append({"name": "dev", "context": {"cluster": "lab", "user": "admin@lab"}})
    target.write_text(yaml.safe_dump(doc))
    admin.unmerge(state, "lab")
    left = yaml.safe_load(target.read_text())
    assert [c["name"] for c in left["contexts"]] == ["dev"]
    assert not left.get("clusters") and not left.get("users")


def test_a_new_kubeconfig_target_moves_the_context(state: State, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    admin.merge(state, "lab", first)
    admin.merge(state, "lab", second)
    assert not first.exists()
    assert admin.merged_path(state) == second


@pytest.mark.parametrize(
    "text", ["clusters: [", "- a list\n", "clusters: not-a-list\n", "contexts: [1, 2]\n", "\udcff"]
)
def test_a_kubeconfig_that_is_not_one_is_refused_clearly(state: State, tmp_path: Path, text: str) -> None:
    target = tmp_path / "config"
    target.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ProvisionerError) as err:
        admin.merge(state, "lab", target)
    assert str(target) in err.value.message() and "--no-merge-kubeconfig" in err.value.message()
    assert target.read_bytes() == text.encode("utf-8", "surrogateescape")


def test_default_target_is_kubeconfigs_first_file(monkeypatch: MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'one'}:{tmp_path / 'two'}")
    assert admin.default_target() == tmp_path / "one"
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert admin.default_target() == tmp_path / ".kube" / "config"


def _fake_artifact_kubectl(root: Path, version: str) -> Path:
    binary = root / "artifacts" / version / "bin" / "kubectl"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho kubectl\n")
    binary.chmod(0o755)
    return binary


def test_kubectl_is_linked_where_path_finds_it(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    old = _fake_artifact_kubectl(tmp_path / "cache", "v1.36.3")
    new = _fake_artifact_kubectl(tmp_path / "cache", "v1.37.2")
    link, note = admin.link_kubectl(old, bindir)
    assert link == bindir / "kubectl" and link.resolve() == old
    link, note = admin.link_kubectl(new, bindir)  # an upgrade moves the link
    assert link is not None and link.resolve() == new
    assert shutil.which("kubectl") == str(link)
    assert "->" in note


def test_a_kubectl_that_is_not_ours_is_left_alone(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text("#!/bin/sh\n")
    ours = _fake_artifact_kubectl(tmp_path / "cache", "v1.37.2")
    link, note = admin.link_kubectl(ours, bindir)
    assert link is None and (bindir / "kubectl").read_text() == "#!/bin/sh\n"
    assert "provisioner kubectl" in note


def test_a_kubectl_earlier_on_path_is_named_with_the_line_to_add(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    first, bindir = tmp_path / "first", tmp_path / "bin"
    first.mkdir()
    (first / "kubectl").write_text("#!/bin/sh\n")
    (first / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{first}:{bindir}")
    link, note = admin.link_kubectl(_fake_artifact_kubectl(tmp_path / "cache", "v1.37.2"), bindir)
    assert link == bindir / "kubectl"
    assert str(first / "kubectl") in note and f'export PATH="{bindir}:$PATH"' in note


def test_cli_kubeconfig_prints_the_user_file(state: State, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(State, "for_cluster", classmethod(lambda cls, name: state))
    runner = CliRunner()
    printed = runner.invoke(cli.app, ["kubeconfig"])
    assert printed.exit_code == 0 and yaml.safe_load(printed.output)["current-context"] == "lab"
    path = runner.invoke(cli.app, ["kubeconfig", "--path"])
    assert path.exit_code == 0 and path.output.strip() == str(state.user_kubeconfig)
    both = runner.invoke(cli.app, ["kubeconfig", "--path", "--print"])
    assert both.exit_code != 0


def test_cli_kubectl_passes_every_argument_through(state: State, monkeypatch: MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(State, "for_cluster", classmethod(lambda cls, name: state))
    seen: list[list[str]] = []

    def execvp(file: str, argv: list[str]) -> None:
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr("provisioner.cli.access.os.execvp", execvp)
    kubectl = tmp_path / "kubectl"
    kubectl.write_text("")
    monkeypatch.setattr("provisioner.cli.access.artifact_set", lambda cluster: type("A", (), {"bin": tmp_path})())
    result = CliRunner().invoke(cli.app, ["kubectl", "get", "nodes", "-o", "wide", "--context", "x"])
    assert result.exit_code == 0, result.output
    argv = seen[0]
    assert argv[argv.index(str(kubectl)) :] == [
        str(kubectl),
        "--kubeconfig",
        str(state.kubeconfig),
        "get",
        "nodes",
        "-o",
        "wide",
        "--context",
        "x",
    ]
