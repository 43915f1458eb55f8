"""This machine as the cluster's nodes: a state directory whose inventory Ansible reaches over the local connection.

The one way the unit tests that run real Ansible (the runner, the node_files and certs roles, the templates)
point an inventory at this machine. Imported by name, as tests/lab imports labcluster.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from provisioner import paths
from provisioner.state import State

# Every host of the inventory is this machine, its modules run by this Python (which has what they import).
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def one_host(name: str, **host_vars: Any) -> dict[str, Any]:
    """An inventory of one host, `name`, with `host_vars`."""
    return {"all": {"hosts": {name: host_vars}}}


def local_state(root: Path, inventory: Mapping[str, Any], playbook: str | None = None) -> State:
    """The state directory `root` with `inventory` as its inventory, every host in it reached locally.

    With `playbook`, that text is root/site.yml, next to a roles/ link to the project's roles.
    """
    state = State(root).ensure()
    local = {"all": {**inventory["all"], "vars": {**inventory["all"].get("vars", {}), **LOCAL}}}
    state.inventory_file.write_text(yaml.safe_dump(local, sort_keys=False))
    if playbook is not None:
        (state.root / "site.yml").write_text(playbook)
        (state.root / "roles").symlink_to(paths.REPO_ROOT / "playbooks" / "roles")
    return state
