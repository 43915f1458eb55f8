"""etcd backup and restore against a real etcd from the artifact set, no VM.

etcd (with the kube-apiserver the helper starts beside it) runs on this machine's loopback with the
project's PKI. `backup.take` runs with LiveCluster's own scripts and file copies; those meant for the
master run here (LocalShell, with the etcd data dir under the test's directory). Then the restore's own
script, the exact etcdutl command line `provisioner restore` sends a master, restores that snapshot into a
new data dir, a second etcd starts on it, and the keys read back.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_verify_apiserver import LocalShell, _free_port, etcd_and_apiserver

from provisioner import backup, endpoints, layout, pki, spec
from provisioner.artifacts.layout import ArtifactSet
from provisioner.events import EventBus, Recorder
from provisioner.hosts import HostConnection, NodeCommandError
from provisioner.paths import default_spec
from provisioner.state import State

pytestmark = pytest.mark.build

KEYS = {f"/registry/configmaps/default/backup-{i}": f"value-{i}" for i in range(5)}
# Owns the restored data dir here, as etcd's user does on a master (this machine has no etcd user).
OWNER = "nobody"


@dataclass(frozen=True)
class MasterShell(LocalShell):
    """The master's commands here, with its etcd data dir (and the restore's paths beside it) under `root`."""

    root: Path = Path()

    def command(self, node: str, script: str) -> list[str]:
        return super().command(node, script.replace(layout.DIRS.etcd_data, str(self.root / "etcd")))


class Loopback(backup.LiveCluster):
    def __init__(self, ssh: MasterShell) -> None:
        self.ssh = ssh


@dataclass
class Lab:
    remote: Loopback
    shell: MasterShell
    cluster: spec.Cluster
    pki_dir: Path
    bin: Path
    etcd_port: int
    tmp: Path


@pytest.fixture(scope="module")
def lab(built: ArtifactSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("backup")
    cluster = spec.load(default_spec())
    state = State(tmp / "state")
    pki.ensure(cluster, state)
    p = state.pki_dir
    encryption = [f"--encryption-provider-config={p / 'encryption-config.yaml'}"]
    with etcd_and_apiserver(built.bin, p, tmp, "super-admin-local", encryption) as running:
        master = HostConnection("master", "master", "127.0.0.1", "127.0.0.1", 22, "root", Path("/nonexistent"))
        root = tmp / "master"
        root.mkdir()
        shell = MasterShell(
            {cluster.masters[0].name: master}, pki_dir=p, bin_dir=built.bin, etcd_port=running.etcd_port, root=root
        )
        for key, value in KEYS.items():
            shell.run(cluster.masters[0].name, f"{layout.ETCDCTL} put {key} {value}")
        yield Lab(Loopback(shell), shell, cluster, p, built.bin, running.etcd_port, tmp)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers() -> set[Path]:
    return set(Path(layout.SNAPSHOT_TMP).glob("provisioner-backup.*"))


@pytest.fixture(scope="module")
def taken(lab: Lab) -> backup.Backup:
    before = _leftovers()
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    result = backup.take(
        lab.cluster.name,
        [m.name for m in lab.cluster.masters],
        lab.remote,
        lab.tmp / "backups",
        lab.bin / "etcdutl",
        bus,
    )
    assert _leftovers() == before, "the snapshot's temporary directory on the master stays behind"
    shown = "\n".join(repr(e) for e in recorder.events)
    assert "etcd is healthy: the snapshot is read from here" in shown
    return result


def test_a_backup_is_a_root_only_snapshot_with_its_sidecar(lab: Lab, taken: backup.Backup) -> None:
    side = taken.sidecar
    assert taken.path.name == f"{side.name}.db" and side.name.startswith("etcd-")
    assert _mode(taken.path) == 0o600 and _mode(backup.sidecar_path(taken.path)) == 0o600
    assert _mode(taken.path.parent) == 0o700
    assert side.sha256 == hashlib.sha256(taken.path.read_bytes()).hexdigest() and side.size == taken.path.stat().st_size
    assert (side.cluster, side.taken_from, side.etcd_version) == (lab.cluster.name, "master", "3.6.16")
    # this etcd's one member, as `etcdctl member list` names it, and the revision it served
    assert [m.name for m in side.members] == ["default"]
    served = backup.served_revision(lab.remote.run("master", backup.etcd_json_script("endpoint status")), "test")
    assert 0 < side.revision <= served and side.total_keys >= len(KEYS)
    assert [b.name for b in backup.list_backups(taken.path.parent)] == [side.name]
    assert backup.list_backups(taken.path.parent)[0].checksum == "ok"


def test_etcdutl_accepts_the_backup_and_refuses_a_file_that_is_no_snapshot(lab: Lab, taken: backup.Backup) -> None:
    checked = backup.validate(taken.sidecar.name, lab.cluster.name, taken.path.parent, lab.bin / "etcdutl")
    assert checked.status.revision == taken.sidecar.revision and checked.status.total_keys == taken.sidecar.total_keys
    # Not a snapshot, with a sidecar that matches it: only etcdutl can tell.
    others = lab.tmp / "others"
    others.mkdir()
    fake = others / "etcd-20260101T000000Z.db"
    fake.write_bytes(os.urandom(64 * 1024))
    digest = hashlib.sha256(fake.read_bytes()).hexdigest()
    sidecar = backup.Sidecar(**{**vars(taken.sidecar), "name": fake.stem, "sha256": digest, "size": 64 * 1024})
    backup.sidecar_path(fake).write_text(sidecar.to_json())
    with pytest.raises(backup.BackupError) as err:
        backup.validate(str(fake), lab.cluster.name, others, lab.bin / "etcdutl")
    assert "is not an etcd snapshot (etcdutl snapshot status: Error: invalid database)" in err.value.cause


def _etcd_on(lab: Lab, data_dir: Path, name: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    p = lab.pki_dir
    proc = subprocess.Popen(
        [
            str(lab.bin / "etcd"),
            f"--name={name}",
            f"--data-dir={data_dir}",
            f"--listen-client-urls=https://127.0.0.1:{port}",
            f"--advertise-client-urls=https://127.0.0.1:{port}",
            f"--listen-peer-urls=http://127.0.0.1:{_free_port()}",
            f"--cert-file={p / 'etcd-server.crt'}",
            f"--key-file={p / 'etcd-server.key'}",
            "--client-cert-auth=true",
            f"--trusted-ca-file={p / 'etcd-ca.crt'}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, port


def test_the_restore_command_line_brings_the_keys_back_on_a_new_etcd(lab: Lab, taken: backup.Backup) -> None:
    member = endpoints.etcd_members(lab.cluster)[0]
    master = member.name
    initial_cluster = endpoints.etcd_initial_cluster([member])
    marker = backup.marker_of(taken.sidecar.sha256, "20261202T000000Z")
    data = lab.shell.root / "etcd"
    assert lab.remote.run(master, backup.data_dir_script()).split() == ["absent"]
    # What an interrupted etcdutl run leaves is in the way of nothing.
    (lab.shell.root / "etcd.restoring" / "member").mkdir(parents=True)
    script = backup.restore_script(
        str(taken.path), member, initial_cluster, endpoints.etcd_cluster_token(lab.cluster), marker, user=OWNER
    )
    assert (
        backup.shlex.join(
            backup.etcdutl_restore_argv(
                str(taken.path), member, initial_cluster, endpoints.etcd_cluster_token(lab.cluster)
            )
        )
        in script
    )
    lab.remote.run(master, script, timeout=120)
    assert not (lab.shell.root / "etcd.restoring").exists()
    assert _mode(data) == 0o700 and pwd.getpwuid(data.stat().st_uid).pw_name == OWNER
    assert all(pwd.getpwuid(f.stat().st_uid).pw_name == OWNER for f in data.rglob("*"))
    assert lab.remote.run(master, backup.data_dir_script()).split() == ["restored", *marker.split()]
    with pytest.raises(NodeCommandError, match="move it aside first"):
        lab.remote.run(master, script)  # never on top of a data dir

    proc, port = _etcd_on(lab, data, member.name, lab.tmp / "restored-etcd.log")
    try:
        etcdctl = layout.ETCDCTL.replace(f":{layout.PORTS['etcd_client']}", f":{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                lab.shell.run(master, f"{etcdctl} endpoint health", timeout=20)
                break
            except NodeCommandError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        for key, value in KEYS.items():
            assert lab.shell.text(master, f"{etcdctl} get {key} --print-value-only") == value
        served = backup.served_revision(lab.shell.text(master, f"{etcdctl} endpoint status -w json"), "restored")
        assert served >= taken.sidecar.revision + backup.BUMP_REVISION
        # --mark-compacted: a watcher that asks for an old revision is told to relist.
        old = lab.shell.run(master, f"{etcdctl} get {next(iter(KEYS))} --rev={taken.sidecar.revision}", check=False)
        assert old.returncode != 0 and b"compacted" in old.stderr, old.stderr
        lab.remote.run(master, backup.clear_marker_script())
        assert lab.remote.run(master, backup.data_dir_script()).split() == ["present"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    aside = f"{layout.ETCD_DATA_ASIDE}20261202T000001Z"
    lab.remote.run(master, backup.move_aside_script(aside))
    assert lab.remote.run(master, backup.data_dir_script()).split() == ["absent"]
    assert (lab.shell.root / Path(aside).name / "member").is_dir()
