"""The lab's network namespace and the private libvirtd/virtlogd that live in it.

Everything that talks to the lab VMs runs inside the namespace (`ip netns exec NAME ...`): libvirt's
bridges and dnsmasq, Vagrant, Ansible, testinfra, kubectl. The namespace has only loopback and the
bridges libvirt creates, no uplink and no default route, so nothing in the lab can reach an address
outside it. The daemons use libvirt's default socket paths, so one namespace lab runs at a time on a
machine (the same limit the lab lock enforces); a running system libvirtd is detected and refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from provisioner.errors import MachineError, ToolMissing

LIBVIRT_SOCKET = Path("/var/run/libvirt/libvirt-sock")
LIBVIRT_URI = "qemu:///system"
DAEMONS = ("virtlogd", "libvirtd")  # start order; libvirtd connects to virtlogd's socket
NETNS_DIR = Path("/run/netns")


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


class LabNamespace:
    """One cluster's namespace, and the daemons started in it (their pid files under `run_dir`)."""

    def __init__(self, name: str, run_dir: Path) -> None:
        self.name = name
        self.run_dir = run_dir

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()

    def pidfile(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

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
        return pid if comm == daemon and in_ns else None

    def running(self) -> bool:
        return self.exists() and all(self.daemon_pid(d) is not None for d in DAEMONS)

    def ensure(self, timeout: float = 60) -> None:
        """Create the namespace and start its daemons; repairs what an earlier killed run left half-done."""
        _require_tools()
        if not self.exists():
            _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for daemon in DAEMONS:
            if self.daemon_pid(daemon) is not None:
                continue
            if daemon == "libvirtd":
                self._refuse_foreign_libvirtd()
            # -d daemonizes; no --listen (it wants TLS certificates): clients use the local socket.
            proc = subprocess.run(
                [*self.prefix, daemon, "-d", "-p", str(self.pidfile(daemon))],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise MachineError(f"{daemon} in namespace {self.name}", proc.stderr.strip() or "failed to start")
        self._wait_for_libvirt(timeout)

    def _refuse_foreign_libvirtd(self) -> None:
        if _socket_answers():
            raise MachineError(
                f"namespace {self.name}",
                f"another libvirtd already serves {LIBVIRT_SOCKET}, so a private one cannot start",
                "stop that libvirtd (or the lab that owns it: `provisioner destroy`), "
                "or set spec.provider.isolation: none to use the system libvirtd",
            )
        # A socket left by a daemon that died would make the new libvirtd refuse to bind.
        for leftover in (
            LIBVIRT_SOCKET,
            LIBVIRT_SOCKET.with_name("libvirt-sock-ro"),
            LIBVIRT_SOCKET.with_name("libvirt-admin-sock"),
        ):
            leftover.unlink(missing_ok=True)

    def _wait_for_libvirt(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [*self.prefix, "virsh", "-c", LIBVIRT_URI, "version"], capture_output=True, text=True, check=False
            )
            if proc.returncode == 0:
                return
            last = proc.stderr.strip()
            time.sleep(0.5)
        raise MachineError(
            f"libvirtd in namespace {self.name}",
            f"did not answer within {timeout:.0f} s: {last}",
            "see its log with `libvirtd -v`",
        )

    def stop_daemons(self, timeout: float = 30) -> None:
        """Stop the daemons this namespace's pid files name (only those, never by process name)."""
        for daemon in reversed(DAEMONS):
            pid = self.daemon_pid(daemon)
            if pid is not None:
                _terminate([pid], timeout)
            self.pidfile(daemon).unlink(missing_ok=True)

    def delete(self, timeout: float = 30) -> None:
        """Stop the daemons, end any process left inside the namespace (dnsmasq, qemu), delete it."""
        self.stop_daemons(timeout)
        if self.exists():
            pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False)
            leftover = [int(p) for p in pids.stdout.split()]
            if leftover:
                _terminate(leftover, timeout)
            _ip("netns", "delete", self.name)
        shutil.rmtree(self.run_dir, ignore_errors=True)


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
    if not LIBVIRT_SOCKET.exists() or shutil.which("virsh") is None:
        return False
    proc = subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, "version"], capture_output=True, text=True, timeout=20, check=False
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
    needed = {"ip": "iproute2", "libvirtd": "libvirt-daemon", "virtlogd": "libvirt-daemon", "virsh": "libvirt-clients"}
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if missing:
        raise ToolMissing("lab namespace", f"missing {', '.join(missing)}", f"apt-get install {' '.join(missing)}")
