"""The node_files role with real Ansible on this machine: files are installed once, then left alone."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import localnode
import pytest

from provisioner import paths, runner
from provisioner.artifacts import serve
from provisioner.errors import PlaybookError, ProvisionerError
from provisioner.events import EventBus
from provisioner.state import State

PLAYBOOK = """
- name: "Prep: local"
  hosts: all
  gather_facts: false
  roles:
    - role: node_files
"""


def _artifacts(root: Path) -> dict[str, str]:
    sums = {}
    for rel, content in {
        "bin/tool-a": b"#!/bin/sh\necho a\n",
        "bin/tool-b": b"#!/bin/sh\necho b\n",
        "cni/bridge": b"bridge plugin\n",
        "images/pause.tar": b"not really a tar\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        sums[rel] = hashlib.sha256(content).hexdigest()
    files = [{"path": rel, "sha256": sha} for rel, sha in sums.items()]
    (root / "manifest.json").write_text(json.dumps({"files": files}))
    return sums


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The artifact server `up` runs for the lab, here on loopback, serving tmp_path/artifacts."""
    _artifacts(tmp_path / "artifacts")
    httpd = serve.serve(tmp_path / "artifacts", "127.0.0.1")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _node(tmp_path: Path, artifacts_dir: Path, sums: dict[str, str]) -> State:
    """A one-host inventory: this machine as the node (files under tmp_path/node), running PLAYBOOK."""
    node = tmp_path / "node"
    host = {
        "artifacts_dir": str(artifacts_dir),
        "artifact_checksums": sums,
        # What site.yml passes from layout.files: [artifact-set path, path on the node, mode].
        "node_files_entries": [
            ["bin/tool-a", str(node / "bin" / "tool-a"), "0755"],
            ["bin/tool-b", str(node / "bin" / "tool-b"), "0755"],
            ["cni/bridge", str(node / "cni" / "bridge"), "0755"],
            ["images/pause.tar", str(node / "images" / "pause.tar"), "0644"],
        ],
        "node_files_sums_cache": str(node / "sums.json"),
    }
    return localnode.local_state(tmp_path / "state", localnode.one_host("node", **host), PLAYBOOK)


def _run(state: State, url: str | None, check: bool = False) -> runner.RunResult:
    return runner.run_playbook(
        state,
        EventBus(),
        playbook=state.root / "site.yml",
        strategy_name="linear",
        extravars={"artifacts_url": url} if url else None,
        check=check,
    )


@pytest.mark.parametrize("transport", ["push", "fetch"])
def test_files_are_installed_once_and_a_changed_file_is_replaced(
    tmp_path: Path, transport: str, request: pytest.FixtureRequest
) -> None:
    """push: copy over the connection (static hosts); fetch: fetch_artifacts from the artifact server (the lab)."""
    url = request.getfixturevalue("server") if transport == "fetch" else None
    artifacts = tmp_path / "artifacts"
    node = tmp_path / "node"
    sums = _artifacts(artifacts)
    # fetching must not need the admin's copy: point it nowhere, so a push would fail
    state = _node(tmp_path, tmp_path / "nowhere" if url else artifacts, sums)

    first = _run(state, url)
    assert first.hosts["node"].changed >= 2  # the directories, then the files (one looped task)
    assert (node / "bin" / "tool-b").read_bytes() == (artifacts / "bin" / "tool-b").read_bytes()
    assert oct((node / "bin" / "tool-b").stat().st_mode & 0o777) == "0o755"
    assert oct((node / "images" / "pause.tar").stat().st_mode & 0o777) == "0o644"

    again = _run(state, url)
    assert again.hosts["node"].changed == 0

    (node / "bin" / "tool-a").write_bytes(b"tampered\n")
    repaired = _run(state, url)
    assert repaired.hosts["node"].changed == 1
    assert (node / "bin" / "tool-a").read_bytes() == (artifacts / "bin" / "tool-a").read_bytes()

    # The node's cache now knows every file by its stat key, so the next probe hashes nothing.
    cache = json.loads((node / "sums.json").read_text())
    assert {Path(p).name: e["sha256"] for p, e in cache.items()}["tool-a"] == sums["bin/tool-a"]
    assert len(cache) == 4


def _tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under root with its content, mode and mtime: what a check run must leave as it is."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("transport", ["push", "fetch"])
def test_check_mode_names_the_files_a_run_replaces_and_changes_nothing(
    tmp_path: Path, transport: str, request: pytest.FixtureRequest
) -> None:
    """`provisioner plan`'s view of the role: the files it would replace, their installed checksums; then the
    real run replaces exactly those, and a check afterwards finds nothing to do."""
    url = request.getfixturevalue("server") if transport == "fetch" else None
    artifacts, node = tmp_path / "artifacts", tmp_path / "node"
    sums = _artifacts(artifacts)
    state = _node(tmp_path, tmp_path / "nowhere" if url else artifacts, sums)
    _run(state, url)
    (node / "bin" / "tool-a").write_bytes(b"tampered\n")
    (node / "cni" / "bridge").unlink()
    before = _tree(node)

    planned = _run(state, url, check=True)
    assert _tree(node) == before
    [change] = planned.changes
    assert sorted(change.items) == [str(node / "bin" / "tool-a"), str(node / "cni" / "bridge")]
    held = planned.installed_sums["node"]
    assert held[str(node / "bin" / "tool-a")] == hashlib.sha256(b"tampered\n").hexdigest()
    assert held[str(node / "cni" / "bridge")] is None
    assert held[str(node / "bin" / "tool-b")] == sums["bin/tool-b"]

    done = _run(state, url)
    assert [(c.task, sorted(c.items)) for c in done.changes] == [(change.task, sorted(change.items))]
    assert done.hosts["node"].changed == planned.hosts["node"].changed == 1
    assert (node / "cni" / "bridge").read_bytes() == (artifacts / "cni" / "bridge").read_bytes()
    assert _run(state, url, check=True).changes == []


def test_a_fetched_file_that_does_not_match_the_manifest_fails_the_run(tmp_path: Path, server: str) -> None:
    """The server is not trusted: a served file whose sha256 differs from the manifest's is refused."""
    node = tmp_path / "node"
    sums = json.loads((tmp_path / "artifacts" / "manifest.json").read_text())["files"]
    (tmp_path / "artifacts" / "bin" / "tool-b").write_bytes(b"#!/bin/sh\necho evil\n")
    manifest = {f["path"]: f["sha256"] for f in sums}
    state = _node(tmp_path, tmp_path / "artifacts", manifest)
    with pytest.raises(PlaybookError) as failed:
        _run(state, server)
    assert "bin/tool-b: downloaded from" in str(failed.value)
    assert f"the manifest says {manifest['bin/tool-b']}" in str(failed.value)
    # All or nothing: not even the files that matched were installed, and no temporary file is left.
    assert sorted(p.name for p in node.rglob("*") if p.is_file()) == []


def test_the_server_serves_only_what_the_manifest_lists(tmp_path: Path, server: str) -> None:
    (tmp_path / "artifacts" / "secret.key").write_bytes(b"not for the nodes\n")
    with urllib.request.urlopen(f"{server}/bin/tool-a") as answer:
        assert answer.read() == b"#!/bin/sh\necho a\n"
    for path in ("/secret.key", "/manifest.json", "/bin/../secret.key", "/bin/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server + path)
        assert refused.value.code == 404, path


@pytest.fixture
def escaping_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A set whose manifest also names files outside it; yields the server's address and the outside file."""
    root = tmp_path / "artifacts"
    _artifacts(root)
    outside = tmp_path / "secret"
    outside.write_bytes(b"not for the nodes\n")
    (root / "bin" / "link-out").symlink_to(outside)
    (root / "bin" / "link-in").symlink_to(root / "bin" / "tool-a")  # a link that stays inside is fine
    (root / "bin" / "swapped").write_bytes(b"inside, until the server runs\n")
    manifest = json.loads((root / "manifest.json").read_text())
    for path in ("../secret", str(outside), "bin/link-out", "bin/link-in", "bin/swapped"):
        manifest["files"].append({"path": path, "sha256": "0" * 64})
    (root / "manifest.json").write_text(json.dumps(manifest))
    httpd = serve.serve(root, "127.0.0.1")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    # Replaced by a link out of the set after the manifest was read: refused when asked for.
    (root / "bin" / "swapped").unlink()
    (root / "bin" / "swapped").symlink_to(outside)
    yield f"127.0.0.1:{httpd.server_address[1]}", outside
    httpd.shutdown()
    httpd.server_close()


def _get(address: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent as it is (urllib would leave it alone too, but this says so)."""
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path, status",
    [("/../secret", 404), ("/bin/link-out", 404), ("/bin/swapped", 403)],
    ids=["dot-dot", "symlink-out", "swapped-for-a-symlink-later"],
)
def test_the_server_serves_nothing_outside_the_set(escaping_server: tuple[str, Path], path: str, status: int) -> None:
    address, _ = escaping_server
    code, body = _get(address, path)
    assert (code, b"not for the nodes" in body) == (status, False)
    assert _get(address, "/bin/tool-a") == (200, b"#!/bin/sh\necho a\n")
    assert _get(address, "/bin/link-in") == (200, b"#!/bin/sh\necho a\n")


def test_manifest_entries_outside_the_set_are_not_listed(tmp_path: Path) -> None:
    """Checked when the manifest is read, so the server starts with only what it may serve."""
    root = tmp_path / "artifacts"
    _artifacts(root)
    (tmp_path / "secret").write_bytes(b"not for the nodes\n")
    (root / "bin" / "link-out").symlink_to(tmp_path / "secret")
    manifest = json.loads((root / "manifest.json").read_text())
    for path in ("../secret", "bin/../../secret", str(tmp_path / "secret"), "bin/link-out"):
        manifest["files"].append({"path": path, "sha256": "0" * 64})
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert sorted(serve.listed_files(root)) == ["/bin/tool-a", "/bin/tool-b", "/cni/bridge", "/images/pause.tar"]


def _module() -> ModuleType:
    path = paths.REPO_ROOT / "playbooks" / "library" / "installed_sums.py"
    spec = importlib.util.spec_from_file_location("installed_sums", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sums_cache_rehashes_only_files_whose_stat_changed(tmp_path: Path) -> None:
    mod = _module()
    a, b, missing = tmp_path / "a", tmp_path / "b", str(tmp_path / "missing")
    a.write_bytes(b"alpha\n")
    b.write_bytes(b"beta\n")
    files = [str(a), str(b), missing]

    sums, cache, hashed, _ = mod.installed_sums(files, {})
    assert hashed == 2
    assert sums == {
        str(a): hashlib.sha256(b"alpha\n").hexdigest(),
        str(b): hashlib.sha256(b"beta\n").hexdigest(),
        missing: None,
    }

    again, cache, hashed, _ = mod.installed_sums(files, cache)
    assert (again, hashed) == (sums, 0)

    # Same size, mtime put back by hand: the ctime still moves, so the change is seen.
    st = a.stat()
    a.write_bytes(b"ALPHA\n")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed, cache, hashed, _ = mod.installed_sums(files, cache)
    assert hashed == 1
    assert changed[str(a)] == hashlib.sha256(b"ALPHA\n").hexdigest()

    # A sum handed in as known (a verified copy just wrote the file) is recorded without reading it.
    b.write_bytes(b"gamma\n")
    told, cache, hashed, _ = mod.installed_sums(files, cache, {str(b): "f" * 64})
    assert (told[str(b)], hashed) == ("f" * 64, 0)


def test_the_sums_probe_reports_mode_and_owner(tmp_path: Path) -> None:
    """A copy is skipped only when content, mode and owner all match: a key made world-readable shows."""
    mod = _module()
    key = tmp_path / "key"
    key.write_bytes(b"secret\n")
    key.chmod(0o600)
    owner = f"{os.getuid()}:{os.getgid()}"
    _, _, _, attrs = mod.installed_sums([str(key), str(tmp_path / "missing")], {})
    assert attrs == {str(key): f"0600:{owner}", str(tmp_path / "missing"): None}
    key.chmod(0o644)
    _, _, _, attrs = mod.installed_sums([str(key)], {})
    assert attrs[str(key)] == f"0644:{owner}"


def test_serving_runs_the_server_as_a_child_and_stops_it(tmp_path: Path) -> None:
    """What `up` does for the lab (there under the namespace prefix; here on loopback, no prefix)."""
    _artifacts(tmp_path / "artifacts")
    with serve.serving(tmp_path / "artifacts", "127.0.0.1", tmp_path / "server.log") as url:
        assert urllib.request.urlopen(f"{url}/cni/bridge").read() == b"bridge plugin\n"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/cni/bridge", timeout=5)


def test_a_server_that_cannot_bind_names_the_address(tmp_path: Path) -> None:
    _artifacts(tmp_path / "artifacts")
    # TEST-NET-1 is on no interface here: binding fails at once, and nothing is sent anywhere.
    with pytest.raises(ProvisionerError) as failed, serve.serving(tmp_path / "artifacts", "192.0.2.1", tmp_path / "x"):
        pass
    assert "artifact server on 192.0.2.1" in str(failed.value)
    assert "Cannot assign requested address" in str(failed.value)
