"""etcd backups kept on the admin machine, and restoring the cluster from one.

`take` (``provisioner backup``): on the first master whose etcd answers ``endpoint health``, ``etcdctl
snapshot save`` as the apiserver reaches etcd (layout.ETCDCTL) into a root-only temporary directory; the
file comes to ``<state>/backups/etcd-<UTC time>.db`` (0600, the directory 0700) with a sidecar
``.json``: the cluster's name, the time, sha256 and size, etcd's version and members, and the revision and
key count that the artifact set's ``etcdutl snapshot status`` reads from the file here. The temporary
directory on the master is removed whatever happens.

`restore` (``provisioner restore``) does what the Kubernetes docs ("Operating etcd clusters for
Kubernetes": stop every API server, restore every etcd member, start the API servers, restart the
components that cache state) and etcd's ("Disaster recovery") describe:

0. before anything changes (`validate`, `preflight`): the file and its sidecar exist, the sidecar names
   this cluster, the sha256 matches, etcdutl reads the file as a snapshot; every node answers and every
   master has etcdutl;
1. every kube-apiserver stops (nothing writes any more), then the controller-managers and schedulers,
   then every etcd;
2. on each master the data dir is moved aside (layout.ETCD_DATA_ASIDE + this run's UTC time: nothing is
   deleted), the snapshot is copied over and checked, and ``etcdutl snapshot restore`` writes the member
   (this cluster's members, peer URLs and token, as the etcd unit names them: endpoints.py) into
   layout.ETCD_DATA_RESTORING, which is handed to the etcd user and only then renamed to the data dir;
3. etcd starts on every master without waiting (``--no-block``: a member of several reports itself
   started only once a majority runs) and each must answer ``endpoint health``; then the apiservers, one
   master at a time, each until it answers ``/readyz``; then the controller-managers and schedulers; then
   kubelet and kube-proxy restart on every worker, so that nothing keeps what it cached from the state the
   restore took back.

The restore bumps etcd's revision by BUMP_REVISION and marks the old ones compacted (etcd's answer to
"etcd restore for Kubernetes", etcd-io/etcd#16028): a client that saw a resourceVersion newer than the
snapshot must relist instead of waiting for revisions that will never come, or meeting reused ones.

A run stopped part-way is continued by running it again. The restore under way is recorded on the admin
machine (RECORD_FILE in the backups directory: the snapshot's sha256 and the run's name, its first start
time) from before anything stops until everything runs again, and each member it restores holds
layout.ETCD_RESTORE_MARKER naming both. So a second run keeps a member this restore already made (and
whatever it served since: no member is ever restored twice within one restore, which raft would not
survive) and restores the others; any other data dir (the original, or one an etcd started on an empty
directory after a reboot) is moved aside under this invocation's own name, never written over; etcdutl's
half-written output (layout.ETCD_DATA_RESTORING) is never the data dir and is removed before etcdutl runs
again. Stopping, starting and waiting are idempotent. A record of another snapshot refuses the restore
until that one is finished or given up.

Everything asked of the cluster goes through a :class:`Remote`; :class:`LiveCluster` is the real one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from provisioner import endpoints, layout, paths, providers
from provisioner.errors import ProvisionerError, ToolMissing
from provisioner.events import EventBus, Phase
from provisioner.files import write_atomic
from provisioner.hosts import NodeCommandError
from provisioner.spec import Cluster
from provisioner.state import State

FORMAT = 1
PREFIX = "etcd-"
SNAPSHOT_SUFFIX = ".db"
SIDECAR_SUFFIX = ".json"
STAMP = "%Y%m%dT%H%M%SZ"
# Far above any revision a lab or a small cluster reaches between two backups.
BUMP_REVISION = 1_000_000_000
# Bounds on each wait, the ones `up` gives the same start (the roles' defaults): etcd's members finding each
# other; an apiserver's /readyz, minutes on an emulated master (its post-start hooks bootstrap the RBAC roles).
ETCD_WAIT_SECONDS = float(paths.role_defaults("etcd")["etcd_start_timeout"])
APISERVER_WAIT_SECONDS = float(paths.role_defaults("control_plane")["control_plane_start_timeout"])
POLL_SECONDS = 5.0
TRANSFER_SECONDS = 900.0
# A backup's temporary directory older than this was left by a killed run, not by one still busy.
STALE_BACKUP_MINUTES = 60
CHUNK = 1 << 20
# In the backups directory while a restore is under way: {"sha256": ..., "run": ..., "snapshot": ...}.
RECORD_FILE = "restore-under-way.json"

# The units, as the layout names them (a unit renamed there fails here, at import).
ETCD = layout.unit("etcd").name
APISERVER = layout.unit("kube-apiserver").name
CONTROLLERS = (layout.unit("kube-controller-manager").name, layout.unit("kube-scheduler").name)
# Stopped together, in one systemd transaction: the controllers want the apiserver (Wants=), so one of them
# restarting by itself (Restart=always) while the apiserver stops alone would cancel that stop and start it.
CONTROL_PLANE = (*CONTROLLERS, APISERVER)
WORKER_UNITS = (layout.unit("kubelet").name, layout.unit("kube-proxy").name)


class BackupError(ProvisionerError):
    """A backup could not be taken, or a file is not a backup to restore."""


class RestoreError(ProvisionerError):
    """A step of the restore could not finish."""


# --- what a backup is --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotStatus:
    """What ``etcdutl snapshot status -w json`` says of a file."""

    revision: int
    total_keys: int
    total_size: int
    hash: int
    storage_version: str


def parse_status(text: bytes | str, source: str) -> SnapshotStatus:
    try:
        doc = json.loads(text)
        return SnapshotStatus(
            int(doc["revision"]), int(doc["totalKey"]), int(doc["totalSize"]), int(doc["hash"]), str(doc["version"])
        )
    except (ValueError, KeyError, TypeError):
        raise BackupError(
            source,
            "etcdutl snapshot status answered something that is not its JSON",
            "run `etcdutl snapshot status -w json FILE` by hand to see what it prints",
        ) from None


def snapshot_status(etcdutl: Path, path: Path) -> SnapshotStatus:
    """etcdutl's reading of the file; a file it cannot read as a snapshot is a BackupError."""
    if not etcdutl.is_file():
        raise ToolMissing(str(etcdutl), "etcdutl of the artifact set is missing", "run `provisioner artifacts build`")
    done = subprocess.run(
        [str(etcdutl), "snapshot", "status", "-w", "json", str(path)], capture_output=True, timeout=300, check=False
    )
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        said = lines[-1] if lines else f"exit code {done.returncode}"
        raise BackupError(
            str(path),
            f"is not an etcd snapshot (etcdutl snapshot status: {said})",
            "pick a backup from `provisioner backup --list`",
        )
    return parse_status(done.stdout, str(path))


@dataclass(frozen=True)
class Member:
    """An etcd member when the backup was taken."""

    name: str
    peer_urls: tuple[str, ...]


@dataclass(frozen=True)
class Sidecar:
    """The .json beside a snapshot: whose it is, when, from where, and what it holds."""

    cluster: str
    name: str
    taken_at: str  # ISO 8601, UTC
    taken_from: str  # the master whose etcd it was read from
    sha256: str
    size: int
    etcd_version: str
    members: tuple[Member, ...]
    revision: int
    total_keys: int

    def to_json(self) -> str:
        doc = {"format": FORMAT, **asdict(self)}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str, source: str) -> Sidecar:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            members = tuple(Member(str(m["name"]), tuple(str(u) for u in m["peer_urls"])) for m in doc["members"])
            return cls(
                cluster=str(doc["cluster"]),
                name=str(doc["name"]),
                taken_at=str(doc["taken_at"]),
                taken_from=str(doc["taken_from"]),
                sha256=str(doc["sha256"]),
                size=int(doc["size"]),
                etcd_version=str(doc["etcd_version"]),
                members=members,
                revision=int(doc["revision"]),
                total_keys=int(doc["total_keys"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(
                source,
                f"is not a backup's sidecar as `provisioner backup` writes it ({type(exc).__name__}: {exc})",
                "restore only what `provisioner backup` took, with its .json beside it",
            ) from None


def sidecar_path(snapshot: Path) -> Path:
    return snapshot.with_suffix(SIDECAR_SUFFIX)


def snapshot_file(backups: Path, name: str) -> Path:
    return backups / f"{name}{SNAPSHOT_SUFFIX}"


def new_name(backups: Path, now: datetime) -> str:
    """etcd-<UTC time>; a second backup within the same second gets -2, -3..."""
    base = f"{PREFIX}{now.astimezone(UTC).strftime(STAMP)}"
    name, n = base, 1
    while snapshot_file(backups, name).exists() or sidecar_path(snapshot_file(backups, name)).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def etcd_version(endpoint_status: bytes | str, source: str) -> str:
    """The server version in ``etcdctl endpoint status -w json``."""
    try:
        return str(json.loads(endpoint_status)[0]["Status"]["version"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise BackupError(source, "etcdctl endpoint status -w json answered something that is not its JSON") from None


def served_revision(endpoint_status: bytes | str, source: str) -> int:
    try:
        return int(json.loads(endpoint_status)[0]["Status"]["header"]["revision"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise BackupError(source, "etcdctl endpoint status -w json answered something that is not its JSON") from None


def parse_members(member_list: bytes | str, source: str) -> tuple[Member, ...]:
    """The members in ``etcdctl member list -w json``."""
    try:
        doc = json.loads(member_list)
        return tuple(Member(str(m.get("name", "")), tuple(m.get("peerURLs") or ())) for m in doc["members"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BackupError(source, "etcdctl member list -w json answered something that is not its JSON") from None


# --- scripts run on the nodes (LiveCluster sends them; the build tier runs them here) -----------------


def health_script() -> str:
    return f"{layout.ETCDCTL} endpoint health"


def etcd_json_script(what: str) -> str:
    """`endpoint status` or `member list`, as JSON."""
    if what not in ("endpoint status", "member list"):
        raise ValueError(what)
    return f"{layout.ETCDCTL} {what} -w json"


def tmp_dir_script(purpose: str) -> str:
    # mktemp -d makes the directory 0700: the snapshot in it is readable by root only.
    return f"mktemp -d {layout.SNAPSHOT_TMP}/provisioner-{purpose}.XXXXXX"


def stale_tmp_script(purpose: str, minutes: int = 0) -> str:
    """Remove what an earlier run killed before its clean-up left (older than `minutes`: another run may be busy)."""
    age = f" -mmin +{minutes}" if minutes else ""
    pattern = shlex.quote(f"provisioner-{purpose}.*")
    return f"find {layout.SNAPSHOT_TMP} -maxdepth 1 -type d -name {pattern}{age} -exec rm -rf -- {{}} +"


def save_script(path: str) -> str:
    return f"{layout.ETCDCTL} snapshot save {shlex.quote(path)}"


def sha256_script(path: str) -> str:
    return f"sha256sum -- {shlex.quote(path)} | cut -d' ' -f1"


def remove_script(path: str) -> str:
    return f"rm -rf -- {shlex.quote(path)}"


def systemctl_script(verb: str, units: Sequence[str], no_block: bool = False) -> str:
    return f"systemctl {verb}{' --no-block' if no_block else ''} -- {' '.join(units)}"


def data_dir_script() -> str:
    """Prints "restored SHA256 RUN" (a restore's marker in it), "present" or "absent"."""
    data = shlex.quote(layout.DIRS.etcd_data)
    marker = shlex.quote(f"{layout.DIRS.etcd_data}/{layout.ETCD_RESTORE_MARKER}")
    return (
        f'if [ -f {marker} ]; then printf "restored %s\\n" "$(cat {marker})"; '
        f"elif [ -e {data} ]; then echo present; else echo absent; fi"
    )


def move_aside_script(target: str) -> str:
    data, to = shlex.quote(layout.DIRS.etcd_data), shlex.quote(target)
    return f'set -eu; if [ -e {to} ]; then echo "{target} already exists" >&2; exit 1; fi; mv -T -- {data} {to}'


def etcdutl_restore_argv(snapshot: str, member: endpoints.EtcdMember, initial_cluster: str, token: str) -> list[str]:
    """The one restore command line: this member among all of them, into layout.ETCD_DATA_RESTORING."""
    return [
        "etcdutl",
        "snapshot",
        "restore",
        snapshot,
        f"--name={member.name}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-token={token}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--data-dir={layout.ETCD_DATA_RESTORING}",
        f"--bump-revision={BUMP_REVISION}",
        "--mark-compacted",
    ]


def restore_script(
    snapshot: str,
    member: endpoints.EtcdMember,
    initial_cluster: str,
    token: str,
    marker: str,
    user: str = layout.ETCD_USER,
) -> str:
    """Restore the member beside the data dir, mark it, hand it to etcd's user, then put it in place."""
    data, restoring = shlex.quote(layout.DIRS.etcd_data), shlex.quote(layout.ETCD_DATA_RESTORING)
    argv = etcdutl_restore_argv(snapshot, member, initial_cluster, token)
    return "; ".join(
        [
            "set -eu",
            f'if [ -e {data} ]; then echo "{layout.DIRS.etcd_data} exists: move it aside first" >&2; exit 1; fi',
            # etcdutl refuses an existing --data-dir; what is there is an earlier run's unfinished output.
            f"rm -rf -- {restoring}",
            shlex.join(argv),
            f"printf '%s\\n' {shlex.quote(marker)} > {restoring}/{layout.ETCD_RESTORE_MARKER}",
            f"chown -R {shlex.quote(user)}: {restoring}",
            f"chmod 0700 {restoring}",
            f"mv -T -- {restoring} {data}",
        ]
    )


def clear_marker_script() -> str:
    return f"rm -f -- {shlex.quote(f'{layout.DIRS.etcd_data}/{layout.ETCD_RESTORE_MARKER}')}"


def readyz_script() -> str:
    """The master's own apiserver over loopback (its admin kubeconfig)."""
    return f"kubectl --kubeconfig={layout.ADMIN_CONF} get --raw /readyz"


def etcdutl_present_script() -> str:
    return (
        'command -v etcdutl >/dev/null || { echo "no etcdutl on PATH: run provisioner up to install it" >&2; exit 1; }'
    )


# --- what is asked of the cluster ----------------------------------------------------------------------


@dataclass(frozen=True)
class DataDir:
    """A master's etcd data dir: "present", "absent" or "restored" (then with the marker's words)."""

    kind: str
    marker: str = ""


def marker_of(sha256: str, run: str) -> str:
    """What a restored member's marker holds: the snapshot and the restore that made it."""
    return f"{sha256} {run}"


def parse_data_dir(text: str, node: str) -> DataDir:
    words = text.split()
    if words == ["present"] or words == ["absent"]:
        return DataDir(words[0])
    if len(words) == 3 and words[0] == "restored":
        return DataDir("restored", " ".join(words[1:]))
    raise RestoreError(f"{node}: {layout.DIRS.etcd_data}", f"the probe of the data dir printed {text.strip()!r}")


class Remote(Protocol):
    """What backup and restore ask of the nodes."""

    def run(self, node: str, script: str, timeout: float = 60) -> str:
        """Run a script as root on a node; its output. A failure raises NodeCommandError."""
        ...

    def fetch(self, node: str, path: str, out: BinaryIO, timeout: float) -> None:
        """Copy a file of the node into `out`."""
        ...

    def upload(self, node: str, local: Path, path: str, timeout: float) -> None:
        """Copy a local file to the node, root-only."""
        ...


# --- backup --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    path: Path
    sidecar: Sidecar
    seconds: float


def healthy_master(masters: Sequence[str], remote: Remote, phase: Phase) -> str:
    problems = []
    for master in masters:
        try:
            remote.run(master, health_script(), timeout=60)
        except NodeCommandError as exc:
            problems.append(f"{master}: {exc.cause}")
            phase.progress(f"etcd does not answer endpoint health ({exc.cause})", host=master)
            continue
        phase.progress("etcd is healthy: the snapshot is read from here", host=master)
        return master
    raise BackupError(
        "etcd",
        f"no master's etcd answers endpoint health ({'; '.join(problems)})",
        "look at `journalctl -u etcd` on the masters; a backup needs one healthy member",
    )


def take(
    cluster: str,
    masters: Sequence[str],
    remote: Remote,
    backups: Path,
    etcdutl: Path,
    bus: EventBus,
    now: datetime | None = None,
) -> Backup:
    """Take a snapshot from one healthy master and keep it, with its sidecar, in `backups`."""
    if not etcdutl.is_file():
        raise ToolMissing(str(etcdutl), "etcdutl of the artifact set is missing", "run `provisioner artifacts build`")
    started = time.monotonic()
    with Phase(bus, "backup", f"cluster {cluster}'s etcd into {backups}") as phase:
        master = healthy_master(masters, remote, phase)
        version = etcd_version(remote.run(master, etcd_json_script("endpoint status")), f"{master}: endpoint status")
        members = parse_members(remote.run(master, etcd_json_script("member list")), f"{master}: member list")
        at = (now or datetime.now(UTC)).astimezone(UTC)
        backups.mkdir(mode=0o700, parents=True, exist_ok=True)
        backups.chmod(0o700)
        name = new_name(backups, at)
        final = snapshot_file(backups, name)
        part = backups / f".{name}{SNAPSHOT_SUFFIX}.part"
        remote.run(master, stale_tmp_script("backup", minutes=STALE_BACKUP_MINUTES))
        tmp = remote.run(master, tmp_dir_script("backup")).strip()
        try:
            on_master = f"{tmp}/snapshot{SNAPSHOT_SUFFIX}"
            remote.run(master, save_script(on_master), timeout=TRANSFER_SECONDS)
            remote_sha = remote.run(master, sha256_script(on_master)).strip()
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                remote.fetch(master, on_master, handle, TRANSFER_SECONDS)
            sha, size = sha256_of(part)
            if sha != remote_sha:
                raise BackupError(
                    f"snapshot from {master}",
                    f"arrived with sha256 {sha[:12]}…, the master's copy has {remote_sha[:12]}…",
                    "run `provisioner backup` again",
                )
            phase.progress(f"snapshot saved and copied: {size} bytes, sha256 {sha[:12]}…", host=master)
            status = snapshot_status(etcdutl, part)
            sidecar = Sidecar(
                cluster=cluster,
                name=name,
                taken_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                taken_from=master,
                sha256=sha,
                size=size,
                etcd_version=version,
                members=members,
                revision=status.revision,
                total_keys=status.total_keys,
            )
            write_atomic(sidecar_path(final), sidecar.to_json().encode(), 0o600)
            part.replace(final)
        finally:
            part.unlink(missing_ok=True)
            remote.run(master, remove_script(tmp))
        phase.progress(f"{final.name}: revision {status.revision}, {status.total_keys} keys, etcd {version}")
    return Backup(final, sidecar, time.monotonic() - started)


@dataclass(frozen=True)
class Listed:
    """One backup in the directory, and whether its file still matches its sidecar."""

    name: str
    path: Path
    sidecar: Sidecar | None
    size: int
    checksum: str  # "ok", "BAD", "no sidecar" or "unreadable sidecar"


def list_backups(backups: Path) -> list[Listed]:
    if not backups.is_dir():
        return []
    found = []
    for path in sorted(backups.glob(f"*{SNAPSHOT_SUFFIX}")):
        side = sidecar_path(path)
        sidecar: Sidecar | None = None
        if not side.is_file():
            checksum = "no sidecar"
        else:
            try:
                sidecar = Sidecar.from_json(side.read_bytes(), str(side))
            except BackupError:
                checksum = "unreadable sidecar"
            else:
                sha, size = sha256_of(path)
                checksum = "ok" if (sha, size) == (sidecar.sha256, sidecar.size) else "BAD"
        found.append(Listed(path.stem, path, sidecar, path.stat().st_size, checksum))
    return sorted(found, key=lambda item: (item.sidecar.taken_at if item.sidecar else "", item.name))


# --- restore: what to restore, checked before anything changes -----------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A snapshot file that passed every check: its sidecar, its checksum, etcdutl's reading."""

    path: Path
    sidecar: Sidecar
    status: SnapshotStatus


def resolve(given: str, backups: Path) -> Path:
    """A path to a snapshot file, or the name of one in `backups` (as `provisioner backup --list` shows it)."""
    path = Path(given).expanduser()
    if path.suffix == SIDECAR_SUFFIX:
        path = path.with_suffix(SNAPSHOT_SUFFIX)
    if path.is_file():
        return path
    named = snapshot_file(backups, given.removesuffix(SNAPSHOT_SUFFIX))
    if "/" not in given and named.is_file():
        return named
    known = [item.name for item in list_backups(backups)]
    listing = f"the backups are {', '.join(known)}" if known else f"there are no backups in {backups} yet"
    raise BackupError(
        given,
        f"is neither a snapshot file nor the name of a backup; {listing}",
        "see `provisioner backup --list`, or take one with `provisioner backup`",
    )


def validate(given: str, cluster: str, backups: Path, etcdutl: Path) -> Snapshot:
    """Everything that can be checked on the admin machine: nothing on the cluster changes before this passes."""
    path = resolve(given, backups)
    side = sidecar_path(path)
    if not side.is_file():
        raise BackupError(
            str(path),
            f"has no sidecar {side.name} beside it: nothing says which cluster it is from or what its checksum is",
            "restore only what `provisioner backup` took, with its .json beside it",
        )
    sidecar = Sidecar.from_json(side.read_bytes(), str(side))
    if sidecar.cluster != cluster:
        raise BackupError(
            str(path),
            f"is a backup of cluster {sidecar.cluster}, not of cluster {cluster} (this spec's)",
            f"restore it with cluster {sidecar.cluster}'s spec (--spec), or pick a backup of {cluster} "
            "from `provisioner backup --list`",
        )
    sha, size = sha256_of(path)
    if (sha, size) != (sidecar.sha256, sidecar.size):
        raise BackupError(
            str(path),
            f"has sha256 {sha[:12]}… and {size} bytes; its sidecar says {sidecar.sha256[:12]}… and {sidecar.size} "
            "bytes: the file changed after the backup",
            "pick another backup from `provisioner backup --list`",
        )
    return Snapshot(path, sidecar, snapshot_status(etcdutl, path))


@dataclass(frozen=True)
class RestorePlan:
    """What `restore` will do: which snapshot, onto which members and nodes, with which aside name."""

    snapshot: Snapshot
    cluster: str
    members: tuple[endpoints.EtcdMember, ...]
    token: str
    workers: tuple[str, ...]
    stamp: str  # this invocation's UTC time: the aside directories' suffix
    run: str  # the restore's name: its first invocation's stamp (a resumed restore keeps it)

    @property
    def resuming(self) -> bool:
        return self.run != self.stamp

    @property
    def marker(self) -> str:
        return marker_of(self.snapshot.sidecar.sha256, self.run)

    @property
    def masters(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    @property
    def initial_cluster(self) -> str:
        return endpoints.etcd_initial_cluster(list(self.members))

    @property
    def aside(self) -> str:
        return f"{layout.ETCD_DATA_ASIDE}{self.stamp}"

    def question(self) -> str:
        side = self.snapshot.sidecar
        then = sorted(m.name for m in side.members)
        moved = "" if then == sorted(self.masters) else f" (taken when the members were {', '.join(then)})"
        workers = f"; kubelet and kube-proxy restart on {', '.join(self.workers)}" if self.workers else ""
        again = f"continue the restore started at {self.run} and " if self.resuming else ""
        return (
            f"{again}restore cluster {self.cluster}'s etcd from {side.name} (taken {side.taken_at} from "
            f"{side.taken_from}, revision {side.revision}, {side.total_keys} keys){moved}? The API goes down: "
            f"kube-apiserver, controller-manager, scheduler and etcd stop on {', '.join(self.masters)}; each "
            f"master's {layout.DIRS.etcd_data} is moved to {self.aside}; whatever was written after the backup "
            f"is then only in those directories{workers}"
        )


def record_path(backups: Path) -> Path:
    return backups / RECORD_FILE


def read_record(backups: Path) -> dict[str, str] | None:
    path = record_path(backups)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("sha256", "run", "snapshot")):
        raise BackupError(
            str(path),
            "is not a record of a restore under way",
            "remove it if no restore was stopped part-way; otherwise the masters' data dirs are as that one left them",
        )
    return {k: doc[k] for k in ("sha256", "run", "snapshot")}


def plan(snapshot: Snapshot, cluster: Cluster, backups: Path, now: datetime | None = None) -> RestorePlan:
    """What `restore` would do now; a restore of this snapshot under way is continued, of another refused."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(STAMP)
    under_way = read_record(backups)
    if under_way is not None and under_way["sha256"] != snapshot.sidecar.sha256:
        raise BackupError(
            f"cluster {cluster.name}",
            f"a restore from {under_way['snapshot']} (started {under_way['run']}) was stopped part-way and is not "
            f"finished; restoring {snapshot.sidecar.name} now would mix the two",
            f"finish it with `provisioner restore {under_way['snapshot']}`, or give it up by removing "
            f"{record_path(backups)} (each master's data dir from before it is kept under {layout.ETCD_DATA_ASIDE}*)",
        )
    return RestorePlan(
        snapshot,
        cluster.name,
        tuple(endpoints.etcd_members(cluster)),
        endpoints.etcd_cluster_token(cluster),
        tuple(w.name for w in cluster.workers),
        stamp,
        under_way["run"] if under_way else stamp,
    )


def preflight(restore_plan: RestorePlan, remote: Remote) -> None:
    """Every node answers and every master has etcdutl, before anything stops."""
    problems = []
    for node in (*restore_plan.masters, *restore_plan.workers):
        script = etcdutl_present_script() if node in restore_plan.masters else "true"
        try:
            remote.run(node, script, timeout=60)
        except NodeCommandError as exc:
            problems.append(f"{node}: {exc.cause}")
    if problems:
        raise RestoreError(
            f"cluster {restore_plan.cluster}",
            f"not every node is ready for a restore ({'; '.join(problems)}); nothing was changed",
            "bring the nodes up (`provisioner status`), and run `provisioner up` if etcdutl is missing",
        )


# --- restore: the steps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    name: str
    seconds: float


@dataclass
class RestoreResult:
    snapshot: str
    set_aside: dict[str, str] = field(default_factory=dict)  # master -> where its data dir went
    kept: list[str] = field(default_factory=list)  # masters already restored from this snapshot by an earlier run
    revision: int = 0  # what etcd serves after the restore
    steps: list[StepTime] = field(default_factory=list)


class _NotYet(Exception):
    pass


def restore(
    restore_plan: RestorePlan,
    remote: Remote,
    bus: EventBus,
    backups: Path,
    timeout: float | None = None,
    interval: float = POLL_SECONDS,
) -> RestoreResult:
    """Stop the control plane, restore every member, start everything again in order (see the module).
    Each wait is bounded by `timeout` when given, else by ETCD_WAIT_SECONDS or APISERVER_WAIT_SECONDS."""
    p = restore_plan
    etcd_timeout = ETCD_WAIT_SECONDS if timeout is None else timeout
    apiserver_timeout = APISERVER_WAIT_SECONDS if timeout is None else timeout
    result = RestoreResult(p.snapshot.sidecar.name)
    record = {"sha256": p.snapshot.sidecar.sha256, "run": p.run, "snapshot": p.snapshot.sidecar.name}
    backups.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(record_path(backups), (json.dumps(record) + "\n").encode(), 0o600)

    def step(name: str, detail: str) -> _Step:
        return _Step(bus, result, name, detail)

    with step("stop", "controller-manager, scheduler and kube-apiserver, then etcd, on every master") as phase:
        for units in (CONTROL_PLANE, (ETCD,)):
            for master in p.masters:
                remote.run(master, systemctl_script("stop", units), timeout=180)
                phase.progress(f"stopped {', '.join(units)}", host=master)

    with step("restore members", f"{p.snapshot.path.name} onto {', '.join(p.masters)}") as phase:
        for member in p.members:
            _restore_member(p, member, remote, phase, result)

    with step("start etcd", "on every master at once, then each must answer endpoint health") as phase:
        for master in p.masters:
            remote.run(master, systemctl_script("start", (ETCD,), no_block=True))
        quorum = f" (a member of {len(p.masters)} waits for a majority of them)" if len(p.masters) > 1 else ""
        for master in p.masters:
            _wait(
                f"etcd on {master} to answer endpoint health{quorum}",
                functools.partial(remote.run, master, health_script()),
                etcd_timeout,
                interval,
                f"look at `journalctl -u etcd` on {master}",
            )
            phase.progress("etcd is healthy", host=master)
        status = remote.run(p.masters[0], etcd_json_script("endpoint status"))
        result.revision = served_revision(status, f"{p.masters[0]}: endpoint status")
        wanted = p.snapshot.status.revision + BUMP_REVISION
        if result.revision < wanted:
            raise RestoreError(
                f"etcd on {p.masters[0]}",
                f"serves revision {result.revision}, below the restored snapshot's {wanted}: it does not run on "
                "the restored data",
                f"look at `journalctl -u etcd` and {layout.DIRS.etcd_data} on {p.masters[0]}",
            )
        phase.progress(f"etcd serves revision {result.revision} (the snapshot's {p.snapshot.status.revision} bumped)")

    # One at a time, as `certs renew` restarts them: three started together on the emulated HA lab shared its
    # two host cores, and master-1's had not finished its rbac/bootstrap-roles post-start hook after 300 s.
    with step("start apiservers", "one master at a time, each until it answers /readyz") as phase:
        for master in p.masters:
            remote.run(master, systemctl_script("start", (APISERVER,)), timeout=180)
            _wait(
                f"the kube-apiserver on {master} to answer /readyz",
                functools.partial(remote.run, master, readyz_script(), 60),
                apiserver_timeout,
                interval,
                f"look at `journalctl -u {APISERVER}` on {master}",
            )
            phase.progress("kube-apiserver is ready", host=master)

    with step("start controllers", "controller-manager and scheduler on every master") as phase:
        for master in p.masters:
            remote.run(master, systemctl_script("start", CONTROLLERS), timeout=180)
            phase.progress(f"started {', '.join(CONTROLLERS)}", host=master)

    with step("restart workers", "kubelet and kube-proxy, so that none keeps state from before") as phase:
        for worker in p.workers:
            remote.run(worker, systemctl_script("restart", WORKER_UNITS), timeout=180)
            phase.progress(f"restarted {', '.join(WORKER_UNITS)}", host=worker)
        # Done. A marker left behind by an interruption here names a finished restore: a later restore
        # moves that data dir aside like any other.
        record_path(backups).unlink()
        for master in p.masters:
            remote.run(master, clear_marker_script())
    return result


def _restore_member(
    p: RestorePlan, member: endpoints.EtcdMember, remote: Remote, phase: Phase, result: RestoreResult
) -> None:
    node, sha = member.name, p.snapshot.sidecar.sha256
    # Only one restore runs (the cluster is down): a copy of a snapshot an interrupted run left can go.
    remote.run(node, stale_tmp_script("restore"))
    found = parse_data_dir(remote.run(node, data_dir_script()), node)
    if found == DataDir("restored", p.marker):
        result.kept.append(node)
        phase.progress(f"already restored by this restore (started {p.run}): kept as it is", host=node)
        return
    if found.kind != "absent":
        remote.run(node, move_aside_script(p.aside))
        result.set_aside[node] = p.aside
        phase.progress(f"{layout.DIRS.etcd_data} moved to {p.aside}", host=node)
    tmp = remote.run(node, tmp_dir_script("restore")).strip()
    try:
        on_node = f"{tmp}/snapshot{SNAPSHOT_SUFFIX}"
        remote.upload(node, p.snapshot.path, on_node, TRANSFER_SECONDS)
        arrived = remote.run(node, sha256_script(on_node)).strip()
        if arrived != sha:
            raise RestoreError(
                f"{node}: the snapshot copied over",
                f"has sha256 {arrived[:12]}…, not {sha[:12]}…",
                "run `provisioner restore` again (it continues here)",
            )
        script = restore_script(on_node, member, p.initial_cluster, p.token, p.marker)
        remote.run(node, script, timeout=TRANSFER_SECONDS)
    finally:
        remote.run(node, remove_script(tmp))
    phase.progress(f"restored as member {member.name} of {p.initial_cluster}", host=node)


class _Step(Phase):
    """A Phase that also records its time in the result, for the summary."""

    def __init__(self, bus: EventBus, result: RestoreResult, name: str, detail: str) -> None:
        super().__init__(bus, f"restore: {name}", detail)
        self.result, self.step = result, name

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        super().__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.result.steps.append(StepTime(self.step, time.monotonic() - self.started))


def _wait(what: str, probe: Callable[[], Any], timeout: float, interval: float, look: str) -> None:
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    while True:
        try:
            probe()
            return
        except NodeCommandError as exc:
            last = exc.cause.strip().splitlines()[-1] if exc.cause.strip() else exc.cause
        if time.monotonic() >= deadline:
            raise RestoreError(
                "restore",
                f"waited {timeout:.0f}s for {what}; last seen: {last}",
                f"{look}, then run `provisioner restore` again with the same snapshot: it continues from here",
            )
        time.sleep(interval)


# --- the real cluster ----------------------------------------------------------------------------------


class LiveCluster:
    """The cluster `up` built, reached over SSH (hosts.Ssh), under the lab's prefix."""

    def __init__(self, cluster: Cluster, state: State, bus: EventBus) -> None:
        self.ssh = providers.node_ssh(cluster, state, bus)

    def run(self, node: str, script: str, timeout: float = 60) -> str:
        return self.ssh.run(node, script, timeout=timeout).stdout.decode(errors="replace")

    def fetch(self, node: str, path: str, out: BinaryIO, timeout: float) -> None:
        self._stream(node, f"cat -- {shlex.quote(path)}", timeout, stdin=None, stdout=out)

    def upload(self, node: str, local: Path, path: str, timeout: float) -> None:
        with local.open("rb") as handle:
            self._stream(node, f"umask 077 && cat > {shlex.quote(path)}", timeout, stdin=handle, stdout=None)

    def _stream(self, node: str, script: str, timeout: float, stdin: BinaryIO | None, stdout: BinaryIO | None) -> None:
        """Ssh.run with a file on one end instead of bytes in memory: a snapshot may be gigabytes."""
        if node not in self.ssh.nodes:
            raise NodeCommandError(node, "not among the cluster's hosts", "check the node name against the spec")
        try:
            done = subprocess.run(
                self.ssh.command(node, script),
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=subprocess.DEVNULL if stdout is None else stdout,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise NodeCommandError(f"{node}: {script}", f"not done within {timeout:.0f}s", "check the node") from None
        if done.returncode != 0:
            raise NodeCommandError(
                f"{node}: {script}",
                done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}",
                "check the node's disk and the SSH connection",
            )
