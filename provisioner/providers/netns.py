"""The lab's network namespace and the private libvirtd/virtlogd that live in it.

Everything that talks to the lab VMs runs inside the namespace (`ip netns exec NAME ...`): libvirt's
bridges and dnsmasq, Vagrant, Ansible, testinfra, kubectl. The namespace has only loopback and the
bridges libvirt creates, no uplink and no default route, so nothing in the lab can reach an address
outside it.

The daemons also get a private mount namespace in which the lab's own directories are bound over
/etc/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /run/libvirt: their definitions,
leases and sockets never mix with a system libvirtd's, QEMU runs as root (so disks under a private state
directory are readable without relabelling), and deleting the lab directory removes every trace. Clients
reach the daemon through a socket under /run/provisioner/NAME, named in the connection URI.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from provisioner.errors import MachineError, ToolMissing

SYSTEM_URI = "qemu:///system"
SYSTEM_SOCKET = Path("/var/run/libvirt/libvirt-sock")
DAEMONS = ("virtlogd", "libvirtd")  # start order; libvirtd connects to virtlogd's socket
NETNS_DIR = Path("/run/netns")
QEMU_USER = "libvirt-qemu"
RUNTIME_ROOT = Path("/run/provisioner")
# Bound over the system paths inside the daemons' mount namespace: (system path, lab subdirectory).
PRIVATE_DIRS = (
    ("/etc/libvirt", "etc"),
    ("/var/lib/libvirt", "lib"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
    ("/run/libvirt", "run"),
)

LIBVIRTD_CONF = """# provisioner lab: local socket only, root only, in the lab's runtime directory.
unix_sock_dir = "{sock_dir}"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""

# QEMU as root without relabelling: the lab's disks and the box's kernel live in root's state directory.
QEMU_CONF = """# provisioner lab
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
"""


def namespace_name(cluster: str) -> str:
    return f"prov-{cluster}"


def run(
    prefix: list[str], command: list[str], timeout: float | None = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command inside the lab (prefix from Provider.command_prefix()), capturing its output."""
    proc = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise MachineError(" ".join(command), f"exit {proc.returncode}: {tail}")
    return proc


def forget_neighbour(prefix: list[str], address: str) -> None:
    """Drop what the lab side remembers of `address`'s MAC: call it when the machine at that address goes.

    A worker made again later gets the same address and a new MAC. Linux keeps the old neighbour entry
    (no garbage collection below gc_thresh1, 128 entries; a bridge whose own MAC stays put, as libvirt
    pins it, never flushes it), so the first connection from here would go to the old MAC and stall until
    the kernel re-probes: a verify check's 10 s TLS handshake with a re-made worker timed out that way.
    """
    run(prefix, ["ip", "neigh", "flush", "to", address], check=False)


class LabNamespace:
    """One cluster's namespace and its daemons; `root` holds the daemons' private directories."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.runtime = RUNTIME_ROOT / name

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    @property
    def socket(self) -> Path:
        return self.runtime / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"{SYSTEM_URI}?socket={self.socket}"

    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()

    def pidfile(self, daemon: str) -> Path:
        return self.runtime / f"{daemon}.pid"

    def daemon_pid(self, daemon: str) -> int | None:
        """The daemon's pid if it is alive and still inside this namespace (pid files can be stale)."""
        try:
            pid = int(self.pidfile(daemon).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            in_ns = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(NETNS_DIR / self.name).st_ino
        except OSError:
            return None
        return pid if comm == daemon and _alive(pid) and in_ns else None

    def running(self) -> bool:
        return self.exists() and all(self.daemon_pid(d) is not None for d in DAEMONS)

    def ensure(self, timeout: float = 60) -> None:
        """Create the namespace and start its daemons; repairs what an earlier killed run left half-done."""
        _require_tools()
        if not self.exists():
            _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        if self.running():
            return
        # Both daemons must share one mount namespace (libvirtd finds virtlogd's socket in the private
        # /run/libvirt), so a half-running pair is stopped and started again together.
        self.stop_daemons()
        _ensure_qemu_user()
        self._write_config()
        # The mount points may not exist yet on a machine where libvirtd never ran; empty dirs are harmless.
        binds = " && ".join(
            f"mkdir -p {system} && mount --bind {shlex.quote(str(self.root / sub))} {system}"
            for system, sub in PRIVATE_DIRS
        )
        starts = " && ".join(f"{daemon} -d -p {shlex.quote(str(self.pidfile(daemon)))}" for daemon in DAEMONS)
        # -d daemonizes; no --listen (it wants TLS certificates): clients use the local socket.
        script = f"set -e; {binds}; {starts}"
        proc = subprocess.run(
            [*self.prefix, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise MachineError(f"libvirtd in namespace {self.name}", proc.stderr.strip() or "failed to start")
        self._wait_for_libvirt(timeout)

    def _write_config(self) -> None:
        for _, sub in PRIVATE_DIRS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "log" / "qemu").mkdir(exist_ok=True)
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.runtime.chmod(0o700)
        (self.root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(sock_dir=self.runtime))
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.root / "etc" / "virtlogd.conf").write_text("# provisioner lab: defaults\n")

    def _wait_for_libvirt(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [*self.prefix, "virsh", "-c", self.uri, "version"], capture_output=True, text=True, check=False
            )
            if proc.returncode == 0:
                return
            last = proc.stderr.strip()
            if self.daemon_pid("libvirtd") is None and time.monotonic() > deadline - timeout + 5:
                break
            time.sleep(0.5)
        raise MachineError(
            f"libvirtd in namespace {self.name}",
            f"did not answer on {self.socket}: {last}",
            f"run it in the foreground to see why: ip netns exec {self.name} libvirtd -v",
        )

    def stop_daemons(self, timeout: float = 30) -> None:
        """Stop the daemons this namespace's pid files name (only those, never by process name)."""
        for daemon in reversed(DAEMONS):
            pid = self.daemon_pid(daemon)
            if pid is not None:
                _terminate([pid], timeout)
            self.pidfile(daemon).unlink(missing_ok=True)

    def delete(self, timeout: float = 30) -> None:
        """Stop the daemons, end any process left inside the namespace (dnsmasq, qemu), delete it all."""
        self.stop_daemons(timeout)
        if self.exists():
            pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False)
            leftover = [int(p) for p in pids.stdout.split()]
            if leftover:
                _terminate(leftover, timeout)
            _ip("netns", "delete", self.name)
        shutil.rmtree(self.runtime, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _ensure_qemu_user() -> None:
    """libvirtd's QEMU driver resolves its compiled-in user before reading qemu.conf, and refuses to start if
    that user is missing, even though our qemu.conf runs QEMU as root. Debian's libvirt-daemon-system creates
    it, but that package wants systemd; a system account with no login is all that is needed."""
    if subprocess.run(["getent", "passwd", QEMU_USER], capture_output=True, check=False).returncode == 0:
        return
    proc = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/var/lib/libvirt",
         "--shell", "/usr/sbin/nologin", QEMU_USER],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise MachineError(
            f"system user {QEMU_USER}",
            f"libvirtd needs it and it could not be created: {proc.stderr.strip()}",
            "apt-get install libvirt-daemon-system, or create it: useradd --system --user-group libvirt-qemu",
        )


def list_namespaces() -> list[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def system_libvirtd_available() -> bool:
    """A libvirtd managed by systemd answers on the default socket (a user's workstation)."""
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        return False
    return pid1 == "systemd" and _socket_answers()


def _socket_answers() -> bool:
    if not SYSTEM_SOCKET.exists() or shutil.which("virsh") is None:
        return False
    proc = subprocess.run(
        ["virsh", "-c", SYSTEM_URI, "version"], capture_output=True, text=True, timeout=20, check=False
    )
    return proc.returncode == 0


def _terminate(pids: list[int], timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MachineError(f"ip {' '.join(args)}", proc.stderr.strip() or f"exit {proc.returncode}")


def _require_tools() -> None:
    needed = {
        "ip": "iproute2",
        "unshare": "util-linux",
        "libvirtd": "libvirt-daemon",
        "virtlogd": "libvirt-daemon",
        "virsh": "libvirt-clients",
    }
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if missing:
        raise ToolMissing("lab namespace", f"missing {', '.join(missing)}", f"apt-get install {' '.join(missing)}")
