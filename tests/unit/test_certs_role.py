"""The certs role with real Ansible on this machine: files are installed once, then left alone, and a
changed file or a key made readable to others is put right again."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from provisioner import paths, runner
from provisioner.events import EventBus
from provisioner.state import State

PLAYBOOK = """
- name: "PKI: local"
  hosts: all
  gather_facts: false
  roles:
    - role: certs
      vars:
        certs_files:
          - { src: ca.crt, dest: pki/ca.crt }
          - { src: node.key, dest: pki/node.key, secret: true }
          - { src: kubeconfigs/node.kubeconfig, dest: node.kubeconfig, secret: true }
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the role installs files owned by root")
def test_certificates_are_copied_once_and_put_right_when_changed(tmp_path: Path) -> None:
    pki, node = tmp_path / "pki", tmp_path / "node"
    for rel, text in {
        "ca.crt": "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n",
        "node.key": "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n",
        # no trailing newline: the comparison must see the file's exact bytes
        "kubeconfigs/node.kubeconfig": "apiVersion: v1\nkind: Config",
    }.items():
        (pki / rel).parent.mkdir(parents=True, exist_ok=True)
        (pki / rel).write_text(text)
    (node / "pki").mkdir(parents=True)  # the prep role makes the directories on a node
    state = State(tmp_path / "state").ensure()
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "pki_dir": str(pki),
        "certs_dir": str(node),
    }
    state.inventory_file.write_text(yaml.safe_dump({"all": {"hosts": {"node": host}}}))
    (state.root / "site.yml").write_text(PLAYBOOK)
    (state.root / "roles").symlink_to(paths.REPO_ROOT / "playbooks" / "roles")

    def run() -> int:
        result = runner.run_playbook(state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear")
        return result.hosts["node"].changed

    assert run() == 1  # one task, three items copied
    assert (node / "node.kubeconfig").read_text() == "apiVersion: v1\nkind: Config"
    assert stat.S_IMODE((node / "pki" / "node.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((node / "pki" / "ca.crt").stat().st_mode) == 0o644

    assert run() == 0

    (node / "pki" / "node.key").chmod(0o644)
    assert run() == 1
    assert stat.S_IMODE((node / "pki" / "node.key").stat().st_mode) == 0o600

    (pki / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnew ca\n-----END CERTIFICATE-----\n")
    assert run() == 1
    assert (node / "pki" / "ca.crt").read_text() == (pki / "ca.crt").read_text()
    assert run() == 0
