"""The node_files role with real Ansible on this machine: files are installed once, then left alone."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import yaml

from provisioner import paths, runner
from provisioner.events import EventBus
from provisioner.state import State

PLAYBOOK = """
- name: "Prep: local"
  hosts: all
  gather_facts: false
  roles:
    - role: node_files
      vars:
        node_files_binaries: [tool-a, tool-b]
        node_files_cni_plugins: [bridge]
        node_files_images: ["{{ artifacts_dir }}/images/pause.tar"]
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
    return sums


def _run(state: State) -> runner.RunResult:
    return runner.run_playbook(state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear")


def test_files_are_copied_once_and_a_changed_file_is_replaced(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    node = tmp_path / "node"
    sums = _artifacts(artifacts)
    state = State(tmp_path / "state").ensure()
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "artifacts_dir": str(artifacts),
        "artifact_checksums": sums,
        "node_files_bin_dir": str(node / "bin"),
        "node_files_cni_dir": str(node / "cni"),
        "node_files_image_dir": str(node / "images"),
        "node_files_sums_cache": str(node / "sums.json"),
    }
    state.inventory_file.write_text(yaml.safe_dump({"all": {"hosts": {"node": host}}}))
    (state.root / "site.yml").write_text(PLAYBOOK)
    (state.root / "roles").symlink_to(paths.REPO_ROOT / "playbooks" / "roles")

    first = _run(state)
    assert first.hosts["node"].changed >= 4  # directories, two binaries, the plugin, the image
    assert (node / "bin" / "tool-b").read_bytes() == (artifacts / "bin" / "tool-b").read_bytes()
    assert (node / "images" / "pause.tar").is_file()

    again = _run(state)
    assert again.hosts["node"].changed == 0

    (node / "bin" / "tool-a").write_bytes(b"tampered\n")
    repaired = _run(state)
    assert repaired.hosts["node"].changed == 1
    assert (node / "bin" / "tool-a").read_bytes() == (artifacts / "bin" / "tool-a").read_bytes()

    # The node's cache now knows every file by its stat key, so the next probe hashes nothing.
    cache = json.loads((node / "sums.json").read_text())
    assert {Path(p).name: e["sha256"] for p, e in cache.items()}["tool-a"] == sums["bin/tool-a"]
    assert len(cache) == 4


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
