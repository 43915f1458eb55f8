"""A cluster as `provisioner restore` sees it: masters running etcd and the control plane, workers running
kubelet and kube-proxy, each master's etcd data dir, files in temporary directories. In memory.

The restore (provisioner/backup.py) runs for real against it; the simulation understands exactly the
scripts that module builds (any other script is an AssertionError, so a restore command line with another
member, initial cluster or token than the cluster's fails the test) and holds to what the real components do:

- an etcd member is healthy only when it runs and a majority of the members run on data of the same
  cluster (the original one, or a restore from one snapshot): a lone member of three never is;
- `systemctl start etcd` without --no-block waits until the member is healthy (the unit is Type=notify:
  a member of several reports itself started once it found a majority), and fails as systemd would after
  its start timeout when the others are not started yet;
- an etcd started on a missing data dir makes a new, empty member there;
- an apiserver answers /readyz only while its etcd is healthy.

Whatever the real cluster would suffer from a wrong order is recorded in `problems`: etcd stopped under a
running apiserver, a data dir moved or restored under a running etcd, an apiserver started while another
one started has not answered /readyz yet (three starting together on the emulated HA lab did not finish
within 300 s), a controller or a worker restarted before the apiservers answer. `interrupt_at`: the call
with that number raises Interrupted, as if the command was stopped there; `fail_restore`: the next etcdutl
run on those masters leaves half-written output and fails.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from provisioner import backup, endpoints, layout
from provisioner.hosts import NodeCommandError

MASTER_UNITS = (backup.ETCD, backup.APISERVER, *backup.CONTROLLERS)


class Interrupted(Exception):
    """The command was stopped at this call."""


@dataclass(frozen=True)
class Data:
    """A data dir's contents: the original cluster's, a restore's (from the snapshot with `sha`), or empty."""

    kind: str  # "original", "restored" or "empty"
    sha: str = ""
    marker: str = ""  # what the restore's marker in it says, while it is there

    @property
    def cluster(self) -> str:
        return f"restored:{self.sha}" if self.kind == "restored" else self.kind


class EtcdSim:
    def __init__(
        self,
        members: Sequence[endpoints.EtcdMember],
        workers: Sequence[str],
        token: str,
        snapshot_revision: int,
    ) -> None:
        self.members = list(members)
        self.masters = [m.name for m in members]
        self.workers = list(workers)
        self.token = token
        self.snapshot_revision = snapshot_revision
        self.active = {m: set(MASTER_UNITS) for m in self.masters} | {w: set(backup.WORKER_UNITS) for w in workers}
        self.data: dict[str, Data | None] = {m: Data("original") for m in self.masters}
        self.aside: dict[str, dict[str, Data]] = {m: {} for m in self.masters}
        self.restoring: dict[str, bool] = {m: False for m in self.masters}
        self.files: dict[str, dict[str, bytes]] = {n: {} for n in [*self.masters, *self.workers]}
        self.tmp_dirs: dict[str, set[str]] = {n: set() for n in self.files}
        self.worker_restarts: dict[str, int] = {w: 0 for w in workers}
        self.answered = set(self.masters)  # apiservers that answered /readyz since they last started
        self.unreachable: set[str] = set()
        self.no_etcdutl: set[str] = set()
        self.fail_restore: set[str] = set()
        self.broken: set[str] = set()  # masters whose etcd never answers
        self.interrupt_at: int | None = None
        self.calls = 0
        self.log: list[tuple[str, str]] = []  # (node, what), every call
        self.changes: list[tuple[str, str]] = []
        self.problems: list[str] = []

    # --- the Remote

    def run(self, node: str, script: str, timeout: float = 60) -> str:
        self._tick(node, script)
        if node in self.unreachable:
            raise NodeCommandError(f"{node}: {script}", "ssh: connect to host: No route to host")
        for verb in ("stop", "start", "restart"):
            for no_block in (False, True):
                for units in self._unit_sets(node):
                    if script == backup.systemctl_script(verb, units, no_block):
                        self._systemctl(node, verb, units, no_block)
                        return ""
        if script == "true":
            return ""
        if script == backup.etcdutl_present_script():
            if node in self.no_etcdutl:
                raise NodeCommandError(f"{node}: {script}", "no etcdutl on PATH (provisioner up installs it)")
            return ""
        if script == backup.health_script():
            if not self._healthy(node):
                raise NodeCommandError(f"{node}: {script}", "context deadline exceeded")
            return f"https://127.0.0.1:{layout.PORTS['etcd_client']} is healthy\n"
        if script == backup.etcd_json_script("endpoint status"):
            return self._endpoint_status(node)
        if script == backup.readyz_script():
            if backup.APISERVER not in self.active[node] or not self._healthy(node):
                raise NodeCommandError(f"{node}: {script}", "The connection to the server was refused")
            self.answered.add(node)
            return "ok"
        if script == backup.data_dir_script():
            found = self.data[node]
            if found is None:
                return "absent\n"
            return f"restored {found.marker}\n" if found.marker else "present\n"
        if script == backup.clear_marker_script():
            found = self.data[node]
            if found is not None:
                self.data[node] = Data(found.kind, found.sha)
            return ""
        for purpose in ("backup", "restore"):
            if script == backup.tmp_dir_script(purpose):
                path = f"{layout.SNAPSHOT_TMP}/provisioner-{purpose}.{self.calls:06d}"
                self.tmp_dirs[node].add(path)
                return path + "\n"
        if script == backup.stale_tmp_script("restore"):
            for path in [d for d in self.tmp_dirs[node] if d.startswith(f"{layout.SNAPSHOT_TMP}/provisioner-restore.")]:
                self.tmp_dirs[node].discard(path)
                self.files[node] = {f: b for f, b in self.files[node].items() if not f.startswith(path + "/")}
            return ""
        for path in sorted(self.tmp_dirs[node]):
            if script == backup.remove_script(path):
                self.tmp_dirs[node].discard(path)
                self.files[node] = {f: b for f, b in self.files[node].items() if not f.startswith(path + "/")}
                return ""
        for path, content in self.files[node].items():
            if script == backup.sha256_script(path):
                return hashlib.sha256(content).hexdigest() + "\n"
        if node in self.data:
            named = re.match(r"set -eu; if \[ -e (\S+) \]", script)
            if named and script == backup.move_aside_script(named.group(1)):
                return self._move_aside(node, named.group(1), script)
            marker = re.search(r"printf '%s\\n' '([0-9a-f]{64} \S+)'", script)
            for path, content in self.files[node].items():
                if marker and script == self._expected_restore(node, path, marker.group(1)):
                    return self._restore(node, hashlib.sha256(content).hexdigest(), marker.group(1), script)
        raise AssertionError(f"{node}: a script the simulation does not know: {script}")

    def fetch(self, node: str, path: str, out: BinaryIO, timeout: float) -> None:
        self._tick(node, f"fetch {path}")
        out.write(self.files[node][path])

    def upload(self, node: str, local: Path, path: str, timeout: float) -> None:
        self._tick(node, f"upload {path}")
        directory = path.rsplit("/", 1)[0]
        assert directory in self.tmp_dirs[node], f"{node}: {path} is not in a temporary directory made for it"
        self.files[node][path] = local.read_bytes()

    # --- what the tests look at

    def actions(self) -> list[tuple[str, str]]:
        """What changed, in order: (node, "stop kube-apiserver"), (node, "move aside"), (node, "restore")..."""
        return list(self.changes)

    def leftovers(self) -> dict[str, set[str]]:
        return {n: d for n, d in self.tmp_dirs.items() if d}

    # --- the simulation

    def _tick(self, node: str, what: str) -> None:
        self.calls += 1
        self.log.append((node, what))
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise Interrupted(f"interrupted at call {self.calls} ({node}: {what[:60]})")

    def _unit_sets(self, node: str) -> list[tuple[str, ...]]:
        if node in self.workers:
            return [tuple(backup.WORKER_UNITS)]
        return [(backup.ETCD,), (backup.APISERVER,), tuple(backup.CONTROLLERS), tuple(backup.CONTROL_PLANE)]

    def _systemctl(self, node: str, verb: str, units: Sequence[str], no_block: bool) -> None:
        for unit in units:
            self.changes.append((node, f"{verb} {unit}"))
            if verb == "stop":
                left = [c for c in backup.CONTROLLERS if c in self.active[node] and c not in units]
                if unit == backup.APISERVER and left:
                    # their own restart (Restart=always, Wants=kube-apiserver) cancels this stop
                    self.problems.append(f"kube-apiserver stopped alone on {node} while {left} run there")
                if unit == backup.ETCD:
                    running = [m for m in self.masters if backup.APISERVER in self.active[m]]
                    if running:
                        self.problems.append(f"etcd stopped on {node} while the kube-apiserver runs on {running}")
                self.active[node].discard(unit)
                if unit == backup.APISERVER:
                    self.answered.discard(node)
                continue
            if unit in backup.CONTROLLERS or unit in backup.WORKER_UNITS:
                unready = [m for m in self.masters if not self._ready(m)]
                if unready:
                    self.problems.append(f"{unit} (re)started on {node} before the apiservers of {unready} answer")
            if unit == backup.APISERVER and not self._healthy(node):
                self.problems.append(f"kube-apiserver started on {node} before its etcd is healthy")
            if unit == backup.APISERVER and backup.APISERVER not in self.active[node]:
                starting = [m for m in self.masters if backup.APISERVER in self.active[m] and m not in self.answered]
                if starting:
                    self.problems.append(f"kube-apiserver started on {node} while the one on {starting} is starting")
                self.answered.discard(node)
            if unit in backup.WORKER_UNITS and verb == "restart":
                self.worker_restarts[node] += 1
            if unit == backup.ETCD and backup.ETCD not in self.active[node]:
                if self.data[node] is None:
                    self.data[node] = Data("empty")  # a new member of a new cluster of its own
                self.active[node].add(unit)
                if not no_block and not self._healthy(node):
                    raise NodeCommandError(
                        f"{node}: systemctl start etcd",
                        "Job for etcd.service failed because a timeout was exceeded.",
                    )
                continue
            self.active[node].add(unit)

    def _healthy(self, node: str) -> bool:
        if node not in self.data or backup.ETCD not in self.active[node] or node in self.broken:
            return False
        mine = self.data[node]
        if mine is None:
            return False
        same = [
            m
            for m in self.masters
            if backup.ETCD in self.active[m]
            and m not in self.broken
            and (d := self.data[m]) is not None
            and d.cluster == mine.cluster
        ]
        return len(same) > len(self.masters) // 2

    def _ready(self, master: str) -> bool:
        return backup.APISERVER in self.active[master] and self._healthy(master)

    def _endpoint_status(self, node: str) -> str:
        found = self.data[node]
        restored = found is not None and found.kind == "restored"
        revision = self.snapshot_revision + backup.BUMP_REVISION + 5 if restored else 40
        status = {
            "header": {"cluster_id": 1, "member_id": 2, "revision": revision, "raft_term": 2},
            "version": "3.6.16",
        }
        return json.dumps([{"Endpoint": f"https://127.0.0.1:{layout.PORTS['etcd_client']}", "Status": status}])

    def _move_aside(self, node: str, target: str, script: str) -> str:
        if backup.ETCD in self.active[node]:
            self.problems.append(f"{node}'s data dir moved aside while its etcd runs")
        if target in self.aside[node]:
            raise NodeCommandError(f"{node}: {script}", f"{target} already exists")
        found = self.data[node]
        if found is None:
            raise NodeCommandError(f"{node}: {script}", f"mv: cannot stat '{layout.DIRS.etcd_data}'")
        self.aside[node][target] = found
        self.data[node] = None
        self.changes.append((node, "move aside"))
        return ""

    def _expected_restore(self, node: str, path: str, marker: str) -> str:
        member = next(m for m in self.members if m.name == node)
        initial_cluster = endpoints.etcd_initial_cluster(self.members)
        return backup.restore_script(path, member, initial_cluster, self.token, marker)

    def _restore(self, node: str, sha: str, marker: str, script: str) -> str:
        if backup.ETCD in self.active[node]:
            self.problems.append(f"{node}: etcdutl restored a member under a running etcd")
        if self.data[node] is not None:
            raise NodeCommandError(f"{node}: {script}", f"{layout.DIRS.etcd_data} exists: move it aside first")
        self.restoring[node] = False  # the script removes an earlier run's unfinished output first
        if node in self.fail_restore:
            self.fail_restore.discard(node)
            self.restoring[node] = True
            raise NodeCommandError(f"{node}: {script}", "Error: write: no space left on device")
        assert marker.startswith(sha + " "), f"{node}: the marker {marker!r} names another snapshot than the one copied"
        self.data[node] = Data("restored", sha, marker)
        self.changes.append((node, "restore"))
        return ""
