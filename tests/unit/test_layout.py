"""One table (provisioner/layout.py) says what is installed where: site.yml installs it, reset removes it,
verify probes it. Ansible resolves the role variables here for real, on this machine."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from provisioner import inventory, layout, paths, spec
from provisioner.artifacts.layout import expected_paths
from provisioner.state import State
from provisioner.verify import selfheal
from provisioner.verify.hosts import test_common, test_master, test_worker

PLAYBOOKS = paths.REPO_ROOT / "playbooks"


def _resolve(tmp_path: Path, expressions: dict[str, str], vars_files: list[Path]) -> dict[str, Any]:
    """Template `expressions` with real Ansible on localhost, with the generated group vars of the default lab."""
    cluster = spec.load(paths.default_spec())
    state = State(tmp_path / "state").ensure()
    group_vars = inventory.group_vars(cluster, state, tmp_path / "artifacts")
    vars_file = tmp_path / "group_vars.yml"
    vars_file.write_text(yaml.safe_dump(group_vars))
    out = tmp_path / "resolved.json"
    body = "{{ {" + ", ".join(f"{k!r}: ({v})" for k, v in expressions.items()) + "} | to_json }}"
    play = [
        {
            "name": "Resolve",
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(vars_file), *map(str, vars_files)],
            "tasks": [{"name": "Write", "ansible.builtin.copy": {"content": body, "dest": str(out), "mode": "0600"}}],
        }
    ]
    playbook = tmp_path / "resolve.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    env = {**os.environ, "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        capture_output=True,
        text=True,
        env={**env, "ANSIBLE_PYTHON_INTERPRETER": sys.executable},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    resolved: dict[str, Any] = json.loads(out.read_text())
    return resolved


def _site_roles() -> set[str]:
    plays = yaml.safe_load((PLAYBOOKS / "site.yml").read_text())
    return {r["role"] for p in plays for r in p["roles"]}


def test_every_unit_site_yml_installs_is_in_the_layout() -> None:
    """The unit files the roles of site.yml write, read from their tasks, are exactly the layout's units."""
    installed: set[str] = set()
    for role in _site_roles():
        for tasks in (PLAYBOOKS / "roles" / role / "tasks").glob("*.yml"):
            installed |= set(re.findall(r'dest: "\{\{ layout\.dirs\.units \}\}/([\w-]+)\.service"', tasks.read_text()))
    assert installed == {u.name for u in layout.UNITS}
    # and no unit is written anywhere else
    for path in (PLAYBOOKS / "roles").rglob("*.yml"):
        assert "/etc/systemd/system" not in path.read_text(), path


def test_reset_removes_every_unit_and_file_site_yml_installs(tmp_path: Path) -> None:
    site = {p["name"]: p for p in yaml.safe_load((PLAYBOOKS / "site.yml").read_text())}
    entries = {
        play["hosts"]: play["roles"][0]["vars"]["node_files_entries"]
        for play in site.values()
        if play["roles"][0]["role"] == "node_files"
    }
    assert set(entries) == {"masters", "workers"}
    resolved = _resolve(
        tmp_path,
        {
            "units": "reset_units",
            "files": "reset_files",
            "paths": "reset_paths",
            "users": "reset_users",
            "set_aside": "reset_set_aside",
            # what site.yml hands the node_files role on each group
            **{group: expr.strip("{} ") for group, expr in entries.items()},
        },
        [PLAYBOOKS / "roles" / "reset" / "defaults" / "main.yml"],
    )
    assert resolved["units"] == [u.name for u in reversed(layout.UNITS)]
    installed = {target for group in ("masters", "workers") for _, target, _ in resolved[group]}
    assert installed and installed <= set(resolved["files"])
    # every config file and directory the roles write outside those is under a path reset removes
    assert set(layout.OWNED_PATHS) <= set(resolved["paths"])
    assert resolved["users"] == list(layout.SYSTEM_USERS)
    # and what a restore leaves beside the data dir: the dir it set aside, the one it did not finish
    where, patterns = resolved["set_aside"]
    for left in (layout.ETCD_DATA_ASIDE + "20261202T051408Z", layout.ETCD_DATA_RESTORING):
        assert str(PurePosixPath(left).parent) == where
        assert any(fnmatch.fnmatch(PurePosixPath(left).name, p) for p in patterns), left
    assert not any(fnmatch.fnmatch(PurePosixPath(layout.DIRS.etcd_data).name, p) for p in patterns)
    # the master gets no container engine, the workers no control plane
    master = {Path(t).name for _, t, _ in resolved["masters"]}
    worker = {Path(t).name for _, t, _ in resolved["workers"]}
    assert {"containerd", "runc", "kubelet"}.isdisjoint(master)
    assert {"etcd", "kube-apiserver"}.isdisjoint(worker)


def test_verify_probes_every_unit_of_the_layout() -> None:
    probed = (
        {u.name for u in test_master.CONTROL_PLANE}
        | {u.name for u in test_worker.WORKER_SERVICES}
        | {u.name for u in test_common.NODE_UNITS}
    )
    assert probed == {u.name for u in layout.UNITS}
    killed = set(selfheal.MASTER_DAEMONS) | set(selfheal.WORKER_DAEMONS)
    assert killed == {u.name for u in layout.UNITS if u.binary}


def test_every_artifact_installed_on_a_node_is_in_the_set_and_every_unit_binary_is_installed() -> None:
    assert {a.path for a in layout.ARTIFACTS} == set(expected_paths())
    for unit in layout.UNITS:
        if unit.binary:
            artifact = next(a for a in layout.ARTIFACTS if a.path == unit.binary)
            assert set(unit.roles) <= set(artifact.roles), f"{unit.name} runs where {unit.binary} is not installed"


@pytest.mark.parametrize(
    "literal", ["/usr/local/bin", "/etc/kubernetes", "/etc/containerd", "/opt/cni", "cluster.local", ":2379", "6443"]
)
def test_templates_and_role_defaults_name_no_path_or_port_of_the_layout(literal: str) -> None:
    """A literal path or port in a role is a second copy of a fact the layout holds."""
    found = [
        str(p.relative_to(PLAYBOOKS))
        for p in (PLAYBOOKS / "roles").rglob("*")
        if p.is_file() and literal in p.read_text()
    ]
    assert not found, f"{literal} written in {found}"
