"""The node_files role with real Ansible on this machine: files are installed once, then left alone."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

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
