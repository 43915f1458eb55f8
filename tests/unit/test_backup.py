"""etcd backup and restore: a snapshot checked before anything changes (its sidecar, its cluster, its
checksum), the backups' list, the restore command line against the etcd unit's facts, and the restore's
order of steps, resumed from any point, on a simulated cluster (tests/unit/simetcd.py).

etcdutl's own reading of a file (a snapshot or not), `etcdctl snapshot save`, and the restore command line
run for real in the build tier (tests/build/test_backup_restore.py).
"""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import clusters
import pytest
from simetcd import MASTER_UNITS, Data, EtcdSim, Interrupted
from typer.testing import CliRunner

from provisioner import backup, endpoints, inventory, layout, paths
from provisioner.backup import BackupError, RestoreError
from provisioner.cli import app
from provisioner.errors import ToolMissing
from provisioner.events import EventBus, PhaseStarted, Recorder
from provisioner.state import State

DATA = Path(__file__).parent / "data"
WHEN = datetime(2026, 12, 2, 1, 24, 3, tzinfo=UTC)
NO_ETCDUTL = Path("/nonexistent/etcdutl")
STATUS = backup.parse_status((DATA / "etcdutl-snapshot-status.json").read_bytes(), "recorded")


def _backup(backups: Path, cluster: str = "lab", content: bytes = b"a snapshot's bytes", at: datetime = WHEN) -> Path:
    """A snapshot file and its sidecar, as `take` writes them."""
    backups.mkdir(parents=True, exist_ok=True)
    name = backup.new_name(backups, at)
    path = backup.snapshot_file(backups, name)
    path.write_bytes(content)
    sidecar = backup.Sidecar(
        cluster=cluster,
        name=name,
        taken_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        taken_from="master",
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        etcd_version="3.6.16",
        members=(backup.Member("master", ("https://127.0.0.1:2380",)),),
        revision=STATUS.revision,
        total_keys=STATUS.total_keys,
    )
    backup.sidecar_path(path).write_text(sidecar.to_json())
    return path


def _snapshot(path: Path) -> backup.Snapshot:
    """A snapshot that passed validate (etcdutl's reading: the recorded one)."""
    return backup.Snapshot(path, backup.Sidecar.from_json(backup.sidecar_path(path).read_bytes(), "test"), STATUS)


# --- what a backup is --------------------------------------------------------------------------------


def test_recorded_etcd_answers_parse() -> None:
    status = (DATA / "etcdctl-endpoint-status.json").read_bytes()
    assert backup.etcd_version(status, "recorded") == "3.6.16"
    assert backup.served_revision(status, "recorded") == 3
    members = backup.parse_members((DATA / "etcdctl-member-list.json").read_bytes(), "recorded")
    assert members == (backup.Member("default", ("http://127.0.0.1:23801",)),)
    assert (STATUS.revision, STATUS.total_keys, STATUS.storage_version) == (3, 2, "3.6.0")
    with pytest.raises(BackupError, match="not its JSON"):
        backup.parse_status(b"Error: invalid database", "x.db")


def test_names_are_utc_times_and_never_reused(tmp_path: Path) -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=5)))
    assert backup.new_name(tmp_path, local) == "etcd-20261202T012403Z"
    first = _backup(tmp_path)
    second = _backup(tmp_path)
    assert (first.name, second.name) == ("etcd-20261202T012403Z.db", "etcd-20261202T012403Z-2.db")


def test_a_sidecar_round_trips_and_a_foreign_json_is_refused(tmp_path: Path) -> None:
    path = _backup(tmp_path)
    text = backup.sidecar_path(path).read_text()
    assert backup.Sidecar.from_json(text, "test").to_json() == text
    assert json.loads(text)["format"] == backup.FORMAT
    with pytest.raises(BackupError, match="not a backup's sidecar"):
        backup.Sidecar.from_json(json.dumps({"cluster": "lab"}), "other.json")


def test_the_list_says_which_files_still_match_their_checksum(tmp_path: Path) -> None:
    good = _backup(tmp_path, at=WHEN)
    bad = _backup(tmp_path, at=WHEN + timedelta(hours=1))
    bad.write_bytes(b"changed afterwards")
    orphan = tmp_path / "etcd-by-hand.db"
    orphan.write_bytes(b"x")
    listed = {item.name: item.checksum for item in backup.list_backups(tmp_path)}
    assert listed == {good.stem: "ok", bad.stem: "BAD", orphan.stem: "no sidecar"}
    assert backup.list_backups(tmp_path / "none") == []


# --- validation: nothing reaches the cluster before it passes -----------------------------------------


def test_an_unknown_name_lists_the_backups_there_are(tmp_path: Path) -> None:
    known = _backup(tmp_path)
    with pytest.raises(BackupError) as err:
        backup.validate("etcd-19990101T000000Z", "lab", tmp_path, NO_ETCDUTL)
    assert known.stem in err.value.cause and "provisioner backup --list" in err.value.fix
    with pytest.raises(BackupError, match="there are no backups in"):
        backup.validate("anything", "lab", tmp_path / "empty", NO_ETCDUTL)


def test_a_file_without_its_sidecar_is_refused(tmp_path: Path) -> None:
    path = _backup(tmp_path)
    backup.sidecar_path(path).unlink()
    with pytest.raises(BackupError, match="has no sidecar"):
        backup.validate(str(path), "lab", tmp_path, NO_ETCDUTL)


def test_a_backup_of_another_cluster_is_refused_naming_both(tmp_path: Path) -> None:
    path = _backup(tmp_path, cluster="staging")
    with pytest.raises(BackupError) as err:
        backup.validate(path.stem, "lab", tmp_path, NO_ETCDUTL)
    assert "cluster staging, not of cluster lab" in err.value.cause
    assert "--spec" in err.value.fix


@pytest.mark.parametrize("change", [b"a snapshot's bytez", b"a snapshot's bytes and more"])
def test_a_file_that_changed_after_the_backup_is_refused(tmp_path: Path, change: bytes) -> None:
    path = _backup(tmp_path)
    path.write_bytes(change)
    with pytest.raises(BackupError, match="the file changed after the backup"):
        backup.validate(path.stem, "lab", tmp_path, NO_ETCDUTL)


def test_a_file_that_passes_every_other_check_goes_to_etcdutl_last(tmp_path: Path) -> None:
    """By name, by path and by its sidecar's path: every check passed, etcdutl is asked (and is missing here)."""
    path = _backup(tmp_path)
    for given in (path.stem, str(path), str(backup.sidecar_path(path))):
        with pytest.raises(ToolMissing, match="etcdutl of the artifact set"):
            backup.validate(given, "lab", tmp_path, NO_ETCDUTL)


# --- the restore command line is the etcd unit's cluster ----------------------------------------------


def test_restore_names_the_members_peer_urls_and_token_the_etcd_unit_uses(tmp_path: Path) -> None:
    cluster = clusters.ha()
    planned = backup.plan(_snapshot(_backup(tmp_path, cluster=cluster.name)), cluster, tmp_path, WHEN)
    group_vars = inventory.group_vars(cluster, State(tmp_path / "state"), tmp_path / "artifacts")
    assert planned.initial_cluster == group_vars["etcd_initial_cluster"]
    assert planned.token == group_vars["etcd_cluster_token"] == f"{cluster.name}-etcd"
    assert [m["peer_url"] for m in group_vars["etcd_members"]] == [m.peer_url for m in planned.members]
    unit = (paths.REPO_ROOT / "playbooks/roles/etcd/templates/etcd.service.j2").read_text()
    for flag in (
        "Environment=ETCD_INITIAL_CLUSTER={{ etcd_initial_cluster }}",
        "--initial-cluster-token={{ etcd_cluster_token }}",
        "--initial-advertise-peer-urls={{ etcd_member.peer_url }}",
        "--data-dir={{ etcd_data_dir }}",
    ):
        assert flag in unit
    member = planned.members[1]
    argv = backup.etcdutl_restore_argv("/var/tmp/x/snapshot.db", member, planned.initial_cluster, planned.token)
    masters = {m.name: m.address for m in cluster.masters}
    assert argv == [
        "etcdutl",
        "snapshot",
        "restore",
        "/var/tmp/x/snapshot.db",
        f"--name={member.name}",
        "--initial-cluster=" + ",".join(f"{n}=https://{a}:2380" for n, a in masters.items()),
        f"--initial-cluster-token={cluster.name}-etcd",
        f"--initial-advertise-peer-urls=https://{masters[member.name]}:2380",
        f"--data-dir={layout.DIRS.etcd_data}.restoring",
        f"--bump-revision={backup.BUMP_REVISION}",
        "--mark-compacted",
    ]


def test_a_lone_member_is_restored_on_loopback(tmp_path: Path) -> None:
    cluster = clusters.default()
    planned = backup.plan(_snapshot(_backup(tmp_path, cluster=cluster.name)), cluster, tmp_path, WHEN)
    assert planned.initial_cluster == f"{cluster.masters[0].name}=https://127.0.0.1:2380"


# --- the restore on a simulated cluster ----------------------------------------------------------------


def _sim(planned: backup.RestorePlan) -> EtcdSim:
    return EtcdSim(planned.members, planned.workers, planned.token, STATUS.revision)


def _setup(tmp_path: Path, ha: bool = True) -> tuple[backup.RestorePlan, EtcdSim, Path]:
    cluster = clusters.ha() if ha else clusters.default()
    backups = tmp_path / "backups"
    planned = backup.plan(_snapshot(_backup(backups, cluster=cluster.name)), cluster, backups, WHEN)
    return planned, _sim(planned), backups


def _restore(
    planned: backup.RestorePlan, sim: EtcdSim, backups: Path, bus: EventBus | None = None
) -> backup.RestoreResult:
    backup.preflight(planned, sim)
    return backup.restore(planned, sim, bus or EventBus(), backups, timeout=0, interval=0)


def _assert_restored(
    planned: backup.RestorePlan, sim: EtcdSim, backups: Path, twice: bool = False, cleared: bool = True
) -> None:
    """Every member restored and running, every original data dir kept once; `twice`: the restore had
    finished before, so the members it made were moved aside by the second one like any data dir;
    `cleared`: no marker is left."""
    sha = planned.snapshot.sidecar.sha256
    assert sim.problems == [], sim.problems
    for master in planned.masters:
        found = sim.data[master]
        assert found is not None and (found.kind, found.sha) == ("restored", sha), (master, found)
        assert not cleared or not found.marker, (master, found)
        assert sim.active[master] == set(MASTER_UNITS), master
        # the original data dir is kept, exactly once, and no restored member was ever put aside
        kept = list(sim.aside[master].values())
        assert kept.count(Data("original")) == 1, (master, sim.aside[master])
        assert twice or all(d.kind != "restored" for d in kept), (master, sim.aside[master])
    for worker in planned.workers:
        assert sim.worker_restarts[worker] >= 1
        assert sim.active[worker] == set(backup.WORKER_UNITS)
    assert sim.leftovers() == {}
    assert not backup.record_path(backups).exists()


def test_three_masters_stop_restore_and_start_in_the_documented_order(tmp_path: Path) -> None:
    planned, sim, backups = _setup(tmp_path)
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    result = _restore(planned, sim, backups, bus)
    _assert_restored(planned, sim, backups)
    m, w = planned.masters, planned.workers
    cm, sched = backup.CONTROLLERS
    expected = [
        *[a for x in m for a in ((x, f"stop {cm}"), (x, f"stop {sched}"), (x, "stop kube-apiserver"))],
        *[(x, "stop etcd") for x in m],
        *[a for x in m for a in ((x, "move aside"), (x, "restore"))],
        *[(x, "start etcd") for x in m],
        *[(x, "start kube-apiserver") for x in m],
        *[a for x in m for a in ((x, f"start {cm}"), (x, f"start {sched}"))],
        *[a for x in w for a in ((x, "restart kubelet"), (x, "restart kube-proxy"))],
    ]
    assert sim.actions() == expected
    # etcd is started without waiting on every master: a member of three only reports started with a majority
    assert all("--no-block" in s for n, s in sim.log if s.startswith("systemctl start") and "etcd" in s)
    assert result.set_aside == {x: f"{layout.DIRS.etcd_data}.before-restore-20261202T012403Z" for x in m}
    assert result.kept == [] and result.revision > STATUS.revision + backup.BUMP_REVISION
    assert [s.name for s in result.steps] == [
        "stop",
        "restore members",
        "start etcd",
        "start apiservers",
        "start controllers",
        "restart workers",
    ]
    phases = [e.phase for e in recorder.of(PhaseStarted) if isinstance(e, PhaseStarted)]
    assert phases == [f"restore: {s.name}" for s in result.steps]


def test_one_master_is_restored_the_same_way(tmp_path: Path) -> None:
    planned, sim, backups = _setup(tmp_path, ha=False)
    _restore(planned, sim, backups)
    _assert_restored(planned, sim, backups)


def test_the_simulation_catches_a_wrong_order(tmp_path: Path) -> None:
    """The controls: etcd stopped first, the apiserver stopped alone under its controllers (whose restart
    cancelled that stop on the HA lab), etcd started blocking on a member of three, or a second apiserver
    started before the first answers, is what sim records or refuses."""
    planned, sim, _ = _setup(tmp_path)
    first = planned.masters[0]
    sim.run(first, backup.systemctl_script("stop", (backup.ETCD,)))
    assert any("while the kube-apiserver runs" in p for p in sim.problems)
    planned, sim, _ = _setup(tmp_path / "alone")
    sim.run(first, backup.systemctl_script("stop", (backup.APISERVER,)))
    assert any("kube-apiserver stopped alone" in p for p in sim.problems)
    planned, sim, _ = _setup(tmp_path / "again")
    for master in planned.masters:
        for units in (backup.CONTROL_PLANE, (backup.ETCD,)):
            sim.run(master, backup.systemctl_script("stop", units))
    with pytest.raises(Exception, match="timeout was exceeded"):
        sim.run(first, backup.systemctl_script("start", (backup.ETCD,)))
    planned, sim, _ = _setup(tmp_path / "together")
    for master in planned.masters:
        sim.run(master, backup.systemctl_script("stop", backup.CONTROL_PLANE))
    sim.run(first, backup.systemctl_script("start", (backup.APISERVER,)))
    sim.run(planned.masters[1], backup.systemctl_script("start", (backup.APISERVER,)))
    assert sim.problems == [f"kube-apiserver started on {planned.masters[1]} while the one on ['{first}'] is starting"]


def test_nothing_changes_when_a_node_is_unreachable_or_a_master_lacks_etcdutl(tmp_path: Path) -> None:
    planned, sim, _ = _setup(tmp_path)
    sim.unreachable.add(planned.workers[0])
    sim.no_etcdutl.add(planned.masters[2])
    with pytest.raises(RestoreError) as err:
        backup.preflight(planned, sim)
    assert planned.workers[0] in err.value.cause and planned.masters[2] in err.value.cause
    assert "nothing was changed" in err.value.cause
    assert sim.actions() == []


def _whole_run_calls(tmp_path: Path) -> int:
    planned, sim, backups = _setup(tmp_path)
    _restore(planned, sim, backups)
    return sim.calls


def test_a_restore_stopped_at_any_call_continues_when_run_again(tmp_path: Path) -> None:
    total = _whole_run_calls(tmp_path / "count")
    for stop_at in range(1, total + 1):
        planned, sim, backups = _setup(tmp_path / str(stop_at))
        sim.interrupt_at = stop_at
        with pytest.raises(Interrupted):
            _restore(planned, sim, backups)
        sim.interrupt_at = None
        under_way = backup.record_path(backups).exists()
        # Without a record the first run had either changed nothing yet or finished (stopped while it
        # cleared the markers, which then name a finished restore).
        finished = not under_way and sim.actions() != []
        if finished:
            _assert_restored(planned, sim, backups, cleared=False)
        # run again later: a new invocation, the same snapshot
        again = backup.plan(planned.snapshot, clusters.ha(), backups, WHEN + timedelta(minutes=5))
        assert again.resuming == under_way and (again.run == planned.run) == under_way
        result = _restore(again, sim, backups)
        _assert_restored(again, sim, backups, twice=finished)
        assert not set(result.kept) & set(result.set_aside), (stop_at, result)


def test_a_failed_etcdutl_run_leaves_nothing_in_the_way_of_the_next(tmp_path: Path) -> None:
    planned, sim, backups = _setup(tmp_path)
    sim.fail_restore.add(planned.masters[1])
    with pytest.raises(Exception, match="no space left"):
        _restore(planned, sim, backups)
    assert sim.restoring[planned.masters[1]] and sim.data[planned.masters[1]] is None
    assert sim.leftovers() == {}  # the snapshot copy went, failure or not
    again = backup.plan(planned.snapshot, clusters.ha(), backups, WHEN + timedelta(minutes=1))
    result = _restore(again, sim, backups)
    _assert_restored(again, sim, backups)
    assert result.kept == [planned.masters[0]]
    assert planned.masters[1] not in result.set_aside  # its data dir had been moved aside already


def test_an_etcd_started_on_the_empty_data_dir_meanwhile_is_moved_aside_too(tmp_path: Path) -> None:
    """A master rebooted between moving its data dir aside and the restore: etcd (enabled) made a new member."""
    planned, sim, backups = _setup(tmp_path)
    sim.fail_restore.add(planned.masters[2])
    with pytest.raises(Exception, match="no space left"):
        _restore(planned, sim, backups)
    sim.run(planned.masters[2], backup.systemctl_script("start", (backup.ETCD,), no_block=True))  # the reboot
    sim.run(planned.masters[2], backup.systemctl_script("stop", (backup.ETCD,)))
    assert sim.data[planned.masters[2]] == Data("empty")
    again = backup.plan(planned.snapshot, clusters.ha(), backups, WHEN + timedelta(minutes=1))
    _restore(again, sim, backups)
    _assert_restored(again, sim, backups)
    assert Data("empty") in sim.aside[planned.masters[2]].values()


def test_a_finished_restore_of_the_same_snapshot_can_be_done_again(tmp_path: Path) -> None:
    planned, sim, backups = _setup(tmp_path)
    _restore(planned, sim, backups)
    again = backup.plan(planned.snapshot, clusters.ha(), backups, WHEN + timedelta(days=1))
    assert not again.resuming
    result = _restore(again, sim, backups)
    assert result.kept == [] and set(result.set_aside) == set(planned.masters)
    assert sim.problems == []


def test_a_restore_of_another_snapshot_under_way_refuses_a_new_one(tmp_path: Path) -> None:
    planned, sim, backups = _setup(tmp_path)
    sim.interrupt_at = 20
    with pytest.raises(Interrupted):
        _restore(planned, sim, backups)
    other = _backup(backups, cluster=clusters.ha().name, content=b"another", at=WHEN + timedelta(hours=2))
    with pytest.raises(BackupError) as err:
        backup.plan(_snapshot(other), clusters.ha(), backups, WHEN + timedelta(hours=3))
    assert planned.snapshot.sidecar.name in err.value.cause and "would mix the two" in err.value.cause
    assert f"provisioner restore {planned.snapshot.sidecar.name}" in err.value.fix


def test_the_record_is_root_only_while_the_restore_is_under_way(tmp_path: Path) -> None:
    planned, sim, backups = _setup(tmp_path)
    sim.interrupt_at = len(planned.masters) + len(planned.workers) + 2  # past the preflight, among the stops
    with pytest.raises(Interrupted):
        _restore(planned, sim, backups)
    record = backup.record_path(backups)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text()) == {
        "sha256": planned.snapshot.sidecar.sha256,
        "run": planned.run,
        "snapshot": planned.snapshot.sidecar.name,
    }


def test_a_wait_that_runs_out_says_what_it_waited_for(tmp_path: Path) -> None:
    planned, sim, backups = _setup(tmp_path)
    broken = planned.masters[2]
    sim.broken.add(broken)  # its etcd never answers; the other two still make a majority
    with pytest.raises(RestoreError) as err:
        _restore(planned, sim, backups)
    assert f"etcd on {broken} to answer endpoint health" in err.value.cause
    assert "waits for a majority" in err.value.cause and "context deadline exceeded" in err.value.cause
    assert f"journalctl -u etcd` on {broken}" in err.value.fix and "run `provisioner restore` again" in err.value.fix
    assert all(backup.APISERVER not in sim.active[m] for m in planned.masters)  # nothing went on without it


def test_the_question_says_what_goes_down_and_where_the_data_goes(tmp_path: Path) -> None:
    planned, _, _ = _setup(tmp_path)
    question = planned.question()
    assert planned.snapshot.sidecar.name in question and "The API goes down" in question
    assert f"{layout.DIRS.etcd_data}.before-restore-20261202T012403Z" in question
    assert all(m in question for m in planned.masters)
    assert "taken when the members were master" in question  # the sidecar's lone member is not this cluster's


def test_endpoints_peer_urls_use_the_layout_port() -> None:
    members = endpoints.etcd_members(clusters.ha())
    assert all(m.peer_url.endswith(f":{layout.PORTS['etcd_peer']}") for m in members)


# --- the verbs -----------------------------------------------------------------------------------------


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROVISIONER_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def test_restore_without_a_terminal_refuses_unless_told_yes(state_root: Path) -> None:
    result = CliRunner().invoke(app, ["restore", "etcd-20261202T012403Z"], input="y\n")
    assert result.exit_code == 1, result.output
    assert "input is not a terminal" in result.output and "--yes" in result.output


def test_restore_of_an_unknown_backup_changes_nothing_and_says_what_there_is(state_root: Path) -> None:
    known = _backup(State.for_cluster(clusters.default().name).backups_dir)
    result = CliRunner().invoke(app, ["restore", "--yes", "etcd-19990101T000000Z"])
    assert result.exit_code == 1, result.output
    assert "is neither a snapshot file nor the name of a backup" in result.output and known.stem in result.output


def test_backup_list_shows_each_backup_and_its_checksum(state_root: Path) -> None:
    backups = State.for_cluster(clusters.default().name).backups_dir
    good = _backup(backups, at=WHEN)
    bad = _backup(backups, at=WHEN + timedelta(hours=1))
    bad.write_bytes(b"changed afterwards")
    result = CliRunner().invoke(app, ["backup", "--list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if "etcd-" in line and "│" in line}
    assert "ok" in rows[good.stem] and "2026-12-02T01:24:03Z" in rows[good.stem]
    assert "BAD" in rows[bad.stem] and str(STATUS.revision) in rows[bad.stem]
