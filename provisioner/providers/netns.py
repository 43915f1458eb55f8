"""The lab's network namespace and the private libvirtd/virtlogd that live in it.

Everything that talks to the lab VMs runs inside the namespace (`ip netns exec NAME ...`): libvirt's
bridges and dnsmasq, Vagrant, Ansible, testinfra, kubectl. The namespace has only loopback and the
bridges libvirt creates, no uplink and no default route, so nothing in the lab can reach an address
outside it.

The daemons also get a private mount namespace in which the lab's own directories are bound over
/etc/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /run/libvirt: their definitions,
leases and sockets never mix with a system libvirtd's, and deleting the lab directory removes every
trace. Clients reach the daemon through a socket under /run/provisioner/NAME, named in the connection URI.

QEMU runs as the unprivileged `libvirt-qemu` user with libvirt's DAC labelling (each VM's disks, kernel,
initrd and console log are handed to that user while it runs) and its seccomp sandbox: a guest that
escapes QEMU is a user who owns nothing but the lab's disks, not root on the machine that holds every CA
key. The lab's files live under root's private state directory (0700 all the way up), which that user
cannot traverse; so in the daemons' mount namespace the first private directory on the way (e.g. /root)
is replaced by a view holding only the path down to the lab's directory: QEMU and libvirtd see the lab
and nothing else of root's home (no PKI, no SSH keys, no kubeconfig).
"""

from __future__ import annotations

import contextlib
import grp
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import MachineError, ToolMissing
from provisioner.processes import alive

SYSTEM_URI = "qemu:///system"
SYSTEM_SOCKET = Path("/var/run/libvirt/libvirt-sock")
DAEMONS = ("virtlogd", "libvirtd")  # start order; libvirtd connects to virtlogd's socket
NETNS_DIR = Path("/run/netns")
QEMU_USER = "libvirt-qemu"
RUNTIME_ROOT = Path("/run/provisioner")
KVM_DEVICE = Path("/dev/kvm")
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

# QEMU unprivileged: libvirt hands each VM's files to this user while it runs (dynamic_ownership) and back
# to root after; no xattrs to remember owners in (remember_owner off: the owner before is always root).
QEMU_CONF = f"""# provisioner lab
user = "{QEMU_USER}"
group = "{QEMU_USER}"
dynamic_ownership = 1
remember_owner = 0
seccomp_sandbox = 1
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
    """One cluster's namespace and its daemons; `root` holds the daemons' private directories.

    `visible` is the directory whose files QEMU must open (the lab's disks, console logs and Vagrant's
    box with the kernel): the daemons' view of the filesystem makes the way down to it traversable.
    """

    def __init__(self, name: str, root: Path, visible: Path | None = None) -> None:
        self.name = name
        self.root = root
        self.visible = visible or root
        self.runtime = RUNTIME_ROOT / name

    @property
    def view(self) -> Path:
        return self.runtime / "view"

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
        return pid if comm == daemon and alive(pid) and in_ns else None

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
        _ensure_kvm_access()
        self._write_config()
        # The mount points may not exist yet on a machine where libvirtd never ran; empty dirs are harmless.
        binds = " && ".join(
            f"mkdir -p {system} && mount --bind {shlex.quote(str(self.root / sub))} {system}"
            for system, sub in PRIVATE_DIRS
        )
        starts = " && ".join(f"{daemon} -d -p {shlex.quote(str(self.pidfile(daemon)))}" for daemon in DAEMONS)
        # -d daemonizes; no --listen (it wants TLS certificates): clients use the local socket.
        script = f"set -e; {self._view_script()} {binds}; {starts}"
        proc = subprocess.run(
            [*self.prefix, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise MachineError(f"libvirtd in namespace {self.name}", proc.stderr.strip() or "failed to start")
        self._wait_for_libvirt(timeout)

    def _view_script(self) -> str:
        """Shell that replaces the first directory QEMU's user cannot traverse on the way to `visible`
        with a view holding only that way down (bind mounts, inside the daemons' mount namespace)."""
        hidden = private_ancestor(self.visible)
        if hidden is None:
            return ""
        leaf = self.view / self.visible.relative_to(hidden)
        shutil.rmtree(self.view, ignore_errors=True)
        leaf.mkdir(parents=True)
        for directory in (self.view, *leaf.relative_to(self.view).parents):
            (self.view / directory).chmod(0o711)  # traversable, not listable
        self.visible.chmod(self.visible.stat().st_mode | 0o011)
        # The lab into the view, then the view (with that mount inside it: --rbind) over /root.
        binds = [("--bind", self.visible, leaf), ("--rbind", self.view, hidden)]
        return " ".join(f"mount {how} {shlex.quote(str(a))} {shlex.quote(str(b))} &&" for how, a, b in binds)

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


def private_ancestor(path: Path) -> Path | None:
    """The highest directory above `path` that others cannot traverse (no o+x), e.g. /root; None if none."""
    for directory in reversed(path.parents):  # from / down
        if not directory.stat().st_mode & 0o001:
            return directory
    return None


@dataclass(frozen=True)
class QemuProcess:
    pid: int
    uid: int
    seccomp: int  # /proc/PID/status Seccomp: 0 none, 1 strict, 2 filter


def qemu_processes(domain_prefix: str) -> dict[str, QemuProcess]:
    """The lab's QEMU processes by libvirt domain name (`-name guest=NAME,...` on their command line)."""
    found: dict[str, QemuProcess] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if not argv[0].endswith(b"qemu-system-x86_64") or b"-name" not in argv:
            continue
        name = argv[argv.index(b"-name") + 1].decode(errors="replace").removeprefix("guest=").split(",", 1)[0]
        if name.startswith(domain_prefix):
            found[name] = QemuProcess(int(proc.name), int(status["Uid"].split()[0]), int(status["Seccomp"]))
    return found


def _ensure_qemu_user() -> None:
    """QEMU runs as this user. Debian's libvirt-daemon-system creates it, but that package wants systemd;
    a system account with no login is all that is needed."""
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


def _ensure_kvm_access() -> None:
    """/dev/kvm as udev leaves it on a Debian host: group kvm, read-write for it, QEMU's user a member.

    libvirt checks whether QEMU's user may open /dev/kvm and compares that with what its capability
    probe found. On a host where no udev ever ran (ours: /dev/kvm root-only), the two disagree and libvirt
    probes QEMU again on every call, which made each `vagrant up` step take minutes. Where udev runs this
    changes nothing. The lab's VMs use KVM only where the accelerator probe chose it.
    """
    if not KVM_DEVICE.exists():
        return
    try:
        members = grp.getgrnam("kvm").gr_mem
    except KeyError:
        _must(["groupadd", "--system", "kvm"])
        members = []
    if QEMU_USER not in members:
        _must(["usermod", "--append", "--groups", "kvm", QEMU_USER])
    info = KVM_DEVICE.stat()
    if info.st_gid == 0 and not info.st_mode & 0o060:
        os.chown(KVM_DEVICE, -1, grp.getgrnam("kvm").gr_gid)
        KVM_DEVICE.chmod(0o660)


def _must(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MachineError(" ".join(command), proc.stderr.strip() or f"exit {proc.returncode}")


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
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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
