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


JOIN = runner.PLAYBOOK_DIR / "roles" / "etcd" / "tasks" / "join.yml"
PEER = "https://10.0.0.3:2380"
RUNNING = {
    "members": [
        {"ID": 1, "name": "m1", "peerURLs": ["https://10.0.0.1:2380"]},
        {"ID": 2, "name": "m2", "peerURLs": ["https://10.0.0.2:2380"]},
        {"ID": 3, "name": "m3", "peerURLs": [PEER]},  # the replaced machine's old entry
    ]
}
# What `member add` answers after the stale entry went: the learner, not yet named.
ADDED = {"member": {"ID": 4}, "members": [*RUNNING["members"][:2], {"ID": 4, "peerURLs": [PEER]}]}


@pytest.mark.parametrize("check", [True, False])
def test_a_joiner_starts_with_the_cluster_the_add_returns_and_check_mode_predicts_it(
    tmp_path: Path, check: bool
) -> None:
    """The join env's member list: from `member add`'s answer, or in check mode (nothing added) from the running
    cluster without the stale entries, plus the learner: the same list either way."""
    join_vars = yaml.safe_load(JOIN.read_text())[0]["vars"]
    out = tmp_path / "members.json"
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "vars": {
                **join_vars,
                "etcd_name": "m3",
                "etcd_member": {"peer_url": PEER},
                "ansible_python_interpreter": sys.executable,
            },
            "tasks": [
                {"ansible.builtin.set_fact": {"etcd_running_cluster": {"stdout": json.dumps(RUNNING)}}},
                {"ansible.builtin.set_fact": {"etcd_added": {"stdout": "" if check else json.dumps(ADDED)}}},
                {
                    "ansible.builtin.copy": {"content": "{{ etcd_members_joined | to_json }}", "dest": str(out)},
                    "check_mode": False,
                },
            ],
        }
    ]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play))
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "m3,",
            "-c",
            "local",
            *(["--check"] if check else []),
            str(playbook),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    joined = json.loads(out.read_text())
    assert [(m.get("name", "m3"), m["peerURLs"]) for m in joined] == [
        ("m1", ["https://10.0.0.1:2380"]),
        ("m2", ["https://10.0.0.2:2380"]),
        ("m3", [PEER]),
    ]
