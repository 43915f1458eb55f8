"""The certs role with real Ansible on this machine: files are installed once, then left alone, and a
changed file or a key made readable to others is put right again; no key's content reaches the run log."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path

import localnode
import pytest

from provisioner import runner
from provisioner.errors import PlaybookError
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
    host = {"pki_dir": str(pki), "certs_dir": str(node)}
    state = localnode.local_state(tmp_path / "state", localnode.one_host("node", **host), PLAYBOOK)

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


DIFF_PLAYBOOK = """
- name: "PKI: local"
  hosts: all
  gather_facts: false
  pre_tasks:
    - name: A file that is no secret, copied in diff mode like any other
      ansible.builtin.copy:
        content: "{{ public_marker }}\\n"
        dest: "{{ certs_dir }}/public.txt"
        mode: "0644"
  roles:
    - role: certs
      vars:
        certs_files:
          - { src: ca.crt, dest: pki/ca.crt }
          - { src: node.key, dest: "{{ key_dest }}", secret: true }
"""


def _key() -> str:
    return f"-----BEGIN PRIVATE KEY-----\n{secrets.token_hex(16)}\n-----END PRIVATE KEY-----\n"


def _diff_mode_run(tmp_path: Path, new_key: str, key_dest: str = "pki/node.key") -> tuple[State, str]:
    """Runs DIFF_PLAYBOOK with ANSIBLE_DIFF_ALWAYS=1; returns the state and the public file's marker."""
    pki, node = tmp_path / "pki", tmp_path / "node"
    pki.mkdir()
    (pki / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
    (pki / "node.key").write_text(new_key)
    (node / "pki").mkdir(parents=True, exist_ok=True)
    public = secrets.token_hex(16)
    host = {"pki_dir": str(pki), "certs_dir": str(node), "public_marker": public, "key_dest": key_dest}
    state = localnode.local_state(tmp_path / "state", localnode.one_host("node", **host), DIFF_PLAYBOOK)
    # The prefix puts the setting into Ansible's own environment, as an operator's shell once did.
    runner.run_playbook(
        state,
        EventBus(),
        playbook=state.root / "site.yml",
        strategy_name="linear",
        prefix=["env", "ANSIBLE_DIFF_ALWAYS=1"],
    )
    return state, public


def _files_holding(state: State, text: str) -> list[str]:
    return [str(p) for p in state.runs_dir.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.skipif(os.geteuid() != 0, reason="the role installs files owned by root")
def test_no_key_reaches_the_run_dir_in_diff_mode(tmp_path: Path) -> None:
    """ANSIBLE_DIFF_ALWAYS=1 shows each changed file's old and new content; a key's must stay out of the log."""
    old_key, new_key = _key(), _key()
    installed = tmp_path / "node" / "pki" / "node.key"
    installed.parent.mkdir(parents=True)
    installed.write_text(old_key)  # a key being replaced: a diff would show both
    installed.chmod(0o600)
    state, public = _diff_mode_run(tmp_path, new_key)
    assert installed.read_text() == new_key
    assert _files_holding(state, public)  # diff mode was on
    for key in (new_key, old_key):
        assert _files_holding(state, key.splitlines()[1]) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the role installs files owned by root")
def test_a_key_that_cannot_be_installed_is_named_and_not_shown(tmp_path: Path) -> None:
    key = _key()
    with pytest.raises(PlaybookError) as failed:
        _diff_mode_run(tmp_path, key, key_dest="missing/node.key")
    assert "missing/node.key: Destination directory" in str(failed.value)
    state = State(tmp_path / "state")
    assert _files_holding(state, key.splitlines()[1]) == []


DIGEST_PLAYBOOK = """
- name: "PKI: local"
  hosts: all
  gather_facts: false
  roles:
    - role: certs
      vars:
        certs_files:
          - { src: ca.crt, dest: pki/ca.crt, restarts: [kubelet, kube-proxy] }
          - { src: node.key, dest: pki/node.key, secret: true, restarts: [kubelet] }
          - { src: kubeconfigs/node.kubeconfig, dest: node.kubeconfig, secret: true }
  post_tasks:
    - name: What the unit templates would name
      ansible.builtin.copy:
        content: "{{ certs_digests | to_json }}"
        dest: "{{ digests_out }}"
        mode: "0644"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the role installs files owned by root")
def test_a_new_file_changes_the_digest_of_exactly_the_services_that_read_it(tmp_path: Path) -> None:
    """The digests the units name (certs_digests): one per service in `restarts`, over exactly its files."""
    pki, node, out = tmp_path / "pki", tmp_path / "node", tmp_path / "digests.json"
    (pki / "kubeconfigs").mkdir(parents=True)
    (pki / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
    (pki / "node.key").write_text(_key())
    (pki / "kubeconfigs" / "node.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    (node / "pki").mkdir(parents=True)
    host = {"pki_dir": str(pki), "certs_dir": str(node), "digests_out": str(out)}
    state = localnode.local_state(tmp_path / "state", localnode.one_host("node", **host), DIGEST_PLAYBOOK)

    def digests() -> dict[str, str]:
        runner.run_playbook(state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear")
        return json.loads(out.read_text())

    first = digests()
    assert sorted(first) == ["kube-proxy", "kubelet"]
    assert first["kube-proxy"] == hashlib.sha256((pki / "ca.crt").read_bytes()).hexdigest()
    assert first["kubelet"] != first["kube-proxy"]
    assert digests() == first  # nothing new: every unit stays as it is

    (pki / "node.key").write_text(_key())  # read by the kubelet only
    second = digests()
    assert second["kubelet"] != first["kubelet"]
    assert second["kube-proxy"] == first["kube-proxy"]

    (pki / "kubeconfigs" / "node.kubeconfig").write_text("apiVersion: v1\nkind: Config\nchanged: yes\n")
    assert digests() == second  # read by no service named here


@pytest.mark.skipif(os.geteuid() != 0, reason="the role installs files owned by root")
def test_check_mode_names_the_files_a_run_replaces_and_shows_no_key(tmp_path: Path) -> None:
    """`provisioner plan`'s view of the role (check mode with diffs): the files it would install, with no content
    shown and no key in the run's directory; the real run then installs exactly those."""
    pki, node = tmp_path / "pki", tmp_path / "node"
    old_key, new_key = _key(), _key()
    (pki / "kubeconfigs").mkdir(parents=True)
    (pki / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
    (pki / "node.key").write_text(old_key)
    (pki / "kubeconfigs" / "node.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    (node / "pki").mkdir(parents=True)
    host = {"pki_dir": str(pki), "certs_dir": str(node)}
    state = localnode.local_state(tmp_path / "state", localnode.one_host("node", **host), PLAYBOOK)

    def run(check: bool) -> runner.RunResult:
        return runner.run_playbook(
            state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear", check=check
        )

    run(check=False)
    (pki / "node.key").write_text(new_key)  # a renewal on the admin machine
    (node / "pki" / "ca.crt").chmod(0o600)  # and a mode changed on the node
    installed = {p: (p.read_bytes(), p.stat().st_mode) for p in node.rglob("*") if p.is_file()}

    planned = run(check=True)
    assert {p: (p.read_bytes(), p.stat().st_mode) for p in node.rglob("*") if p.is_file()} == installed
    [change] = planned.changes
    assert (change.task, sorted(change.items)) == (
        "Certificates, keys and kubeconfigs from the cluster PKI",
        [
            "pki/ca.crt",
            "pki/node.key",
        ],
    )
    assert change.diffs == ()
    for key in (old_key, new_key):
        assert _files_holding(state, key.splitlines()[1]) == []

    done = run(check=False)
    assert [(c.task, sorted(c.items)) for c in done.changes] == [(change.task, sorted(change.items))]
    assert (node / "pki" / "node.key").read_text() == new_key
    assert run(check=True).changes == []
