"""`provisioner plan` tells the truth on the converged default lab: it says nothing would change (exit 0) and
writes nothing of the cluster's state; after a certificate is renewed on the admin machine it names, per host,
the tasks that would change (exit 2), `up` then changes exactly those, and the next plan says nothing again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from labcluster import LabCluster
from pytest import MonkeyPatch
from typer.testing import CliRunner

from provisioner import lifecycle, pki
from provisioner import plan as plan_mod
from provisioner.cli import app
from provisioner.events import EventBus
from provisioner.runner import RunResult
from provisioner.state import State

pytestmark = [pytest.mark.lab, pytest.mark.cluster]

# Read by kube-proxy only (site.yml's PKI play for workers): renewing it restarts kube-proxy and nothing else.
RENEWED = "kube-proxy"


def _planned(monkeypatch: MonkeyPatch) -> Callable[[], tuple[int, str, plan_mod.Plan]]:
    """Runs `provisioner plan` on the default lab as a user would; returns its exit status, output and plan."""
    real = plan_mod.plan
    seen: list[plan_mod.Plan] = []

    def keep(*args: Any, **kwargs: Any) -> plan_mod.Plan:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(plan_mod, "plan", keep)

    def run() -> tuple[int, str, plan_mod.Plan]:
        result = CliRunner().invoke(app, ["plan"])
        assert seen, result.output
        return result.exit_code, result.output, seen.pop()

    return run


def _state_files(state: State) -> dict[str, tuple[bytes, int]]:
    """What `plan` must leave alone: the PKI, the inventory and the host list."""
    files = [*state.pki_dir.rglob("*"), *state.inventory_dir.rglob("*"), state.hosts_file]
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()}


def _changes(run: RunResult | None) -> list[tuple[str, str, str, bool, tuple[str, ...]]]:
    assert run is not None
    return sorted((c.host, c.phase, c.task, c.handler, c.items) for c in run.changes)


def _holding_a_key(run_dir: Path) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if p.is_file() and b"PRIVATE KEY-----" in p.read_bytes()]


def test_plan_says_nothing_on_the_converged_lab_then_names_exactly_what_up_changes(
    lab_cluster: LabCluster, monkeypatch: MonkeyPatch
) -> None:
    lab = lab_cluster
    nodes = {n.name for n in lab.cluster.spec.nodes}
    workers = {n.name for n in lab.cluster.workers}
    plan = _planned(monkeypatch)

    before = _state_files(lab.state)
    code, output, quiet = plan()
    assert code == 0, output
    assert quiet.empty and quiet.run is not None and set(quiet.run.hosts) == nodes
    assert output.strip().splitlines()[-1].startswith("nothing would change"), output
    assert _state_files(lab.state) == before

    # A renewal on the admin machine that no node has yet (what `certs renew kube-proxy` does before its `up`).
    pki.ensure(lab.cluster, lab.state, renew=[RENEWED])
    code, output, planned = plan()
    assert code == 2, output
    assert planned.run is not None and planned.issued == [] and planned.provisioned == []
    assert {h.name for h in planned.hosts if h.changes} == workers, output
    for host in planned.hosts:
        if host.name in workers:
            assert f"{host.name}: {len(host.changes)} task(s) would change" in output
            assert host.restarts == ["Restart kube-proxy"], output
    assert _holding_a_key(planned.run.run_dir) == []

    done = lifecycle.up(lab.cluster, lab.state, EventBus())
    assert _changes(done.run) == _changes(planned.run)
    assert {h: s.changed for h, s in done.run.hosts.items()} == {h: s.changed for h, s in planned.run.hosts.items()}

    code, output, again = plan()
    assert code == 0, output
    assert again.empty
