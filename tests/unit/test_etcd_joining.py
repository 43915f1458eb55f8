"""Which masters join a running etcd cluster (the etcd role's etcd_joining), evaluated by Ansible itself on
three local hosts, in one batch and in the rolling batches of one that `certs renew` uses (a rolling run
read the other masters' data-dir facts before they existed, and failed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner import runner

DEFAULTS = runner.PLAYBOOK_DIR / "roles" / "etcd" / "defaults" / "main.yml"
MASTERS = ["m1", "m2", "m3"]


def _joining(
    tmp_path: Path, with_data: set[str], serial: int | None, hosts: list[str] = MASTERS
) -> dict[str, list[str]]:
    for name in MASTERS:
        (tmp_path / name).mkdir(exist_ok=True)
        if name in with_data:
            (tmp_path / name / "member").mkdir(exist_ok=True)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[masters]\n" + "".join(f"{h} ansible_connection=local\n" for h in hosts))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    play = [
        {
            "hosts": "masters",
            "gather_facts": False,
            "serial": serial or "100%",
            "vars_files": [str(DEFAULTS)],
            "vars": {"etcd_members": [{"name": n} for n in MASTERS], "ansible_python_interpreter": sys.executable},
            "tasks": [
                {
                    "ansible.builtin.stat": {"path": f"{tmp_path}/{{{{ inventory_hostname }}}}/member"},
                    "register": "etcd_member_dir",
                },
                {
                    "ansible.builtin.copy": {
                        "content": "{{ etcd_joining | to_json }}",
                        "dest": f"{out}/{{{{ inventory_hostname }}}}.json",
                    },
                    "delegate_to": "localhost",
                },
            ],
        }
    ]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    return {h: json.loads((out / f"{h}.json").read_text()) for h in hosts}


@pytest.mark.parametrize("serial", [None, 1])
def test_a_running_cluster_has_no_joiner_in_one_batch_or_in_batches_of_one(tmp_path: Path, serial: int | None) -> None:
    assert _joining(tmp_path, set(MASTERS), serial) == {h: [] for h in MASTERS}


def test_a_new_cluster_starts_together(tmp_path: Path) -> None:
    assert _joining(tmp_path, set(), None) == {h: [] for h in MASTERS}


def test_an_empty_member_beside_members_with_data_joins(tmp_path: Path) -> None:
    assert _joining(tmp_path, {"m1", "m2"}, None) == {h: ["m3"] for h in MASTERS}


def test_a_replaced_master_run_alone_joins(tmp_path: Path) -> None:
    assert _joining(tmp_path, {"m1", "m2"}, None, hosts=["m3"]) == {"m3": ["m3"]}
