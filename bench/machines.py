"""Lab machine figures: box build (cold, warm), raw VM boot floor, `up` of the default spec, `destroy`.

    .venv/bin/python bench/machines.py [--cold] [--cycles N] [--skip-floor]

--cold empties the box cache (and its .deb cache) first, so the build downloads and builds everything.
Takes /tmp/provisioner-lab.lock while VMs run. Prints one line per figure, then a JSON summary.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from provisioner import box, paths, spec
from provisioner.events import EventBus
from provisioner.providers import for_cluster
from provisioner.providers.vagrant import VagrantLab, probe_accelerator
from provisioner.state import State

LOCK = Path("/tmp/provisioner-lab.lock")


def figure(results: dict[str, float], name: str, seconds: float) -> None:
    results[name] = round(seconds, 1)
    print(f"{name:<28} {seconds:8.1f} s", flush=True)


def timed(results: dict[str, float], name: str, fn: object) -> None:
    started = time.monotonic()
    fn()  # type: ignore[operator]
    figure(results, name, time.monotonic() - started)


def boot_floor(built: box.Box, timeout: float = 600) -> float:
    """One VM from the box with plain QEMU (no libvirt, no Vagrant) until its SSH server greets.

    User-mode networking with restrict=on: the guest can reach nothing; only a loopback port forward in.
    """
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(built.path) as tar:
            tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name in ("box.img", "vmlinuz", "initrd.img")])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        accel = "kvm" if probe_accelerator() == "kvm" else "tcg,thread=multi"
        command = [
            "qemu-system-x86_64", "-accel", accel, "-m", "2048", "-smp", "1", "-nographic", "-snapshot",
            "-kernel", f"{tmp}/vmlinuz", "-initrd", f"{tmp}/initrd.img",
            "-append", f"{box.RECIPE.kernel_cmdline} systemd.hostname=floor",
            "-drive", f"file={tmp}/box.img,if=virtio,format=qcow2",
            "-nic", f"user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        ]  # fmt: skip
        started = time.monotonic()
        qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.monotonic() - started < timeout:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                        conn.settimeout(10)
                        if conn.recv(64).startswith(b"SSH-"):
                            return time.monotonic() - started
                except OSError:
                    pass
                time.sleep(1)
            raise SystemExit(f"the floor VM did not answer SSH within {timeout} s")
        finally:
            qemu.terminate()
            qemu.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="empty the box cache first")
    parser.add_argument("--cycles", type=int, default=2, help="up/destroy cycles of the default spec")
    parser.add_argument("--skip-floor", action="store_true")
    args = parser.parse_args()
    results: dict[str, float] = {}
    bus = EventBus()

    if args.cold:
        shutil.rmtree(paths.cache_root() / "box", ignore_errors=True)
        timed(results, "box build (cold)", lambda: box.build(bus))
    else:
        timed(results, "box build (forced, debs cached)", lambda: box.build(bus, force=True))
    timed(results, "box build (warm)", lambda: box.build(bus))
    built = box.cached()
    assert built is not None

    cluster = spec.load(paths.default_spec())
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not args.skip_floor:
            figure(results, "raw VM boot to SSH (floor)", boot_floor(built))
        with tempfile.TemporaryDirectory() as tmp:
            lab = for_cluster(cluster, State(Path(tmp) / cluster.name).ensure(), bus)
            assert isinstance(lab, VagrantLab)
            print(f"accelerator: {lab.accelerator}, isolated: {lab.isolated}", flush=True)
            for cycle in range(1, args.cycles + 1):
                timed(results, f"up 1+2 (cycle {cycle})", lab.create)
                figure(results, f"  vms running (cycle {cycle})", float(len(lab.hosts())))
                timed(results, f"destroy (cycle {cycle})", lab.destroy)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
