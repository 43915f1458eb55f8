"""Lab machine figures: box build (cold, warm), raw VM boot floor, `up` of the default spec, `destroy`.

    .venv/bin/python bench/machines.py [--cold] [--cycles N] [--skip-floor | --floor-only]

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


def boot_floor(built: box.Box, count: int = 1, timeout: float = 900) -> float:
    """`count` VMs from the box with plain QEMU (no libvirt, no Vagrant), started together, until every
    one's SSH server greets.

    User-mode networking with restrict=on: a guest can reach nothing; only a loopback port forward goes in.
    """
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(built.path) as tar:
            wanted = [m for m in tar.getmembers() if m.name in ("box.img", "vmlinuz", "initrd.img")]
            tar.extractall(tmp, members=wanted)
        accel = "kvm" if probe_accelerator() == "kvm" else "tcg,thread=multi"
        ports = [_free_port() for _ in range(count)]
        started = time.monotonic()
        vms = [
            subprocess.Popen(
                [
                    "qemu-system-x86_64",
                    "-accel",
                    accel,
                    "-m",
                    "2048",
                    "-smp",
                    "1",
                    "-nographic",
                    "-snapshot",
                    "-kernel",
                    f"{tmp}/vmlinuz",
                    "-initrd",
                    f"{tmp}/initrd.img",
                    "-append",
                    f"{box.RECIPE.kernel_cmdline} systemd.hostname=floor",
                    "-drive",
                    f"file={tmp}/box.img,if=virtio,format=qcow2",
                    "-nic",
                    f"user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in ports
        ]
        try:
            waiting = set(ports)
            while waiting and time.monotonic() - started < timeout:
                waiting = {port for port in waiting if not _ssh_greets(port)}
                time.sleep(1)
            if waiting:
                raise SystemExit(f"{len(waiting)} floor VM(s) did not answer SSH within {timeout} s")
            return time.monotonic() - started
        finally:
            for vm in vms:
                vm.terminate()
            for vm in vms:
                vm.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ssh_greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.settimeout(10)
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="empty the box cache first")
    parser.add_argument("--cycles", type=int, default=2, help="up/destroy cycles of the default spec")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--floor-only", action="store_true", help="measure only the raw boot floor")
    args = parser.parse_args()
    results: dict[str, float] = {}
    bus = EventBus()

    if args.cold:
        shutil.rmtree(paths.cache_root() / "box", ignore_errors=True)
        timed(results, "box build (cold)", lambda: box.build(bus))
    timed(results, "box build (warm)", lambda: box.build(bus))
    built = box.cached()
    assert built is not None

    cluster = spec.load(paths.default_spec())
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not args.skip_floor:
            figure(results, "raw boot to SSH, 1 VM", boot_floor(built, 1))
            figure(results, "raw boot to SSH, 3 VMs", boot_floor(built, 3))
        if args.floor_only:
            print(json.dumps(results, indent=2))
            return
        with tempfile.TemporaryDirectory() as tmp:
            lab = for_cluster(cluster, State(Path(tmp) / cluster.name).ensure(), bus)
            assert isinstance(lab, VagrantLab)
            print(f"accelerator: {lab.accelerator}, isolated: {lab.isolated}", flush=True)
            for cycle in range(1, args.cycles + 1):
                timed(results, f"up 1+2 (cycle {cycle})", lab.create)
                running = [s.name for s in lab.status() if s.state == "running"]
                print(f"  running after up: {', '.join(running)}", flush=True)
                timed(results, f"destroy (cycle {cycle})", lab.destroy)
                left = [s.name for s in lab.status() if s.state != "not created"]
                print(f"  left after destroy: {', '.join(left) or 'nothing'}", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
