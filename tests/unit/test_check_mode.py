"""The roles of site.yml hold to what makes `provisioner plan` (check mode) truthful, read from the roles
themselves: probes run in check mode and change nothing, changes go through node_command (which reports in
check mode), waits are left out of it, and only the certs role copies the PKI's files, never with a diff."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import localnode
import pytest
import yaml

from provisioner import layout, runner
from provisioner.errors import PlaybookError
from provisioner.events import EventBus

ROLES = runner.PLAYBOOK_DIR / "roles"
PROBES = ("ansible.builtin.command", "ansible.builtin.shell")


def _site_roles() -> list[str]:
    """Every role site.yml runs, with the roles those include (service_check, addon_apply)."""
    found = [r["role"] for play in yaml.safe_load(runner.SITE.read_text()) for r in play.get("roles", [])]
    for role in found:
        for task, _ in _tasks(role):
            included = (task.get("ansible.builtin.include_role") or {}).get("name")
            if included and included not in found:
                found.append(included)
    return sorted(set(found))


def _walk(tasks: list[dict[str, Any]], skipped_in_check: bool) -> Iterator[tuple[dict[str, Any], bool]]:
    for task in tasks:
        left_out = skipped_in_check or "not ansible_check_mode" in str(task.get("when", ""))
        if "block" in task:
            for part in ("block", "rescue", "always"):
                yield from _walk(task.get(part) or [], left_out)
        else:
            yield task, left_out


def _tasks(role: str) -> Iterator[tuple[dict[str, Any], bool]]:
    """(task, whether check mode leaves it out) for every task and handler of the role."""
    for path in sorted((ROLES / role).glob("*/*.yml")):
        if path.parent.name in ("tasks", "handlers"):
            yield from _walk(yaml.safe_load(path.read_text()) or [], False)


def _every_task() -> list[tuple[str, dict[str, Any], bool]]:
    return [(role, task, left_out) for role in _site_roles() for task, left_out in _tasks(role)]


def test_the_site_roles_are_found() -> None:
    assert {"prep", "node_files", "certs", "etcd", "service_check", "addon_apply", "coredns"} <= set(_site_roles())


PROBE_TASKS = [(role, task, left_out) for role, task, left_out in _every_task() if set(task) & set(PROBES)]


@pytest.mark.parametrize(
    ("role", "task", "left_out"), PROBE_TASKS, ids=[f"{role}: {task.get('name')}" for role, task, _ in PROBE_TASKS]
)
def test_a_command_is_a_probe_that_check_mode_runs_or_leaves_out(
    role: str, task: dict[str, Any], left_out: bool
) -> None:
    """ansible.builtin.command skips itself in check mode: a probe whose result later tasks read must run there
    (check_mode: false), unless check mode leaves the whole step out; a command that changes the node is a
    node_command instead, which reports in check mode what it would do."""
    assert task.get("changed_when") is False, f"{role}: {task.get('name')} is not a probe"
    assert task.get("check_mode") is False or left_out, f"{role}: {task.get('name')} does not run in check mode"


def test_no_task_claims_a_change_it_would_not_report_in_check_mode() -> None:
    claimed = [f"{role}: {task.get('name')}" for role, task, _ in _every_task() if task.get("changed_when") is True]
    assert claimed == []


def test_only_the_certs_role_copies_the_pki_and_never_with_a_diff() -> None:
    """Keys, kubeconfigs and the encryption config come from the PKI directory; a diff would show them."""
    copies = [
        (role, task)
        for role, task, _ in _every_task()
        for module in ("ansible.builtin.copy", "ansible.builtin.template")
        if "pki_dir" in str(task.get(module, ""))
    ]
    assert [role for role, _ in copies] == ["certs"]
    assert all(task.get("diff") is False for _, task in copies)


FAILING = """
- name: "Alpha: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: Change something that breaks
      node_command:
        argv: [sh, -c, "echo broken-disk >&2; exit 3"]
"""


def test_a_node_command_that_fails_names_the_command_and_its_error(tmp_path: Path) -> None:
    state = localnode.local_state(tmp_path / "state", localnode.one_host("box"), FAILING)
    with pytest.raises(PlaybookError) as failed:
        runner.run_playbook(state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear")
    assert "'Change something that breaks' on box" in str(failed.value)
    assert "exit code 3" in failed.value.cause and "broken-disk" in failed.value.cause


CONVERGED = """
- name: "Prep: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: The prep role's check for a converged host
      ansible.builtin.include_role:
        name: prep
        tasks_from: converged
"""


@pytest.mark.parametrize(
    "installed", [["pod-network", "kubelet"], ["pod-network", "containerd", "kubelet", "kube-proxy"]]
)
def test_check_mode_refuses_a_host_whose_first_converge_did_not_finish(tmp_path: Path, installed: list[str]) -> None:
    units = tmp_path / "units"
    units.mkdir()
    for name in installed:
        (units / f"{name}.service").write_text("[Unit]\n")
    view = layout.group_vars()
    view["dirs"] = {**view["dirs"], "units": str(units)}  # type: ignore[dict-item]
    host = localnode.one_host("worker-9", layout=view, node_role="worker")
    state = localnode.local_state(tmp_path / "state", host, CONVERGED)

    def check() -> runner.RunResult:
        return runner.run_playbook(
            state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear", check=True
        )

    if len(installed) == 4:
        assert check().changes == []
        return
    with pytest.raises(PlaybookError) as refused:
        check()
    assert "worker-9 has not been converged yet (containerd, kube-proxy not installed)" in refused.value.cause
    assert "`provisioner up` converges it" in refused.value.cause
    assert "picks up where it stopped" not in refused.value.fix  # a check run has nothing to resume


SLOW_PROBE = """
- name: "A service that never becomes healthy, each probe of it slow"
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait for it
      ansible.builtin.include_role:
        name: service_check
      vars:
        service_check_unit: never-healthy
        service_check_timeout: 4
        service_check_delay: 1
        service_check_command: [sh, -c, "echo probed >> {probes}; sleep 3; exit 1"]
"""


def test_a_wait_is_bounded_by_its_time_not_by_its_count_of_probes(tmp_path: Path) -> None:
    """Seen on the HA lab: a 420 s wait that ran 40 min, each probe of a starved apiserver taking 30 s. Here a
    4 s bound with probes 1 s apart would be 4 retries, 5 probes in all; each probe takes 3 s, so the time runs
    out after the second (fewer on a slow machine, never more)."""
    probes = tmp_path / "probes"
    state = localnode.local_state(tmp_path / "state", localnode.one_host("box"), SLOW_PROBE.format(probes=probes))
    with pytest.raises(PlaybookError) as failed:
        runner.run_playbook(state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear")
    assert "never-healthy on box was not healthy within 4 s" in str(failed.value.cause), failed.value.cause
    made = len(probes.read_text().splitlines())
    assert 1 <= made <= 3, f"{made} probes in a 4 s wait of 3 s probes"
