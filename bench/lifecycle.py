"""The whole lifecycle of the default lab, one figure per step, with the floor measured in the same run.

    .venv/bin/python bench/lifecycle.py [--skip-verify] [--json FILE]

Steps: artifacts (warm), box (warm), machines up, cluster converge, idempotent re-run, verify, scale +1
worker, scale -1 worker, destroy. Floor: raw VM boot to SSH (plain QEMU, 1 VM and 3 together) and the
start of the binaries on a booted node. Runs on a copy of the default spec named `bench`, so it never
touches the `lab` cluster's state; holds /tmp/provisioner-lab.lock while VMs run. Prints a table and
writes a JSON copy. A script whose figures we compare, not a timed test.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machines import boot_floor

from provisioner import artifacts, box, lifecycle, paths, providers, scaling, spec, verify
from provisioner.events import EventBus
from provisioner.state import State

LOCK = Path("/tmp/provisioner-lab.lock")
# Binaries whose start-up is timed on a booted node: one per role, the node's own heaviest starters.
START_PROBES = {
    "master": ["/usr/local/bin/etcd --version", "/usr/local/bin/kube-apiserver --version"],
    "worker": ["/usr/local/bin/kubelet --version", "/usr/local/bin/containerd --version"],
}


class Bench:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def step(self, name: str, fn: Callable[[], Any], note: str = "") -> Any:
        started = time.monotonic()
        value = fn()
        seconds = time.monotonic() - started
        self.rows.append((name, seconds, note))
        print(f"{name:<34} {seconds:8.1f} s  {note}", flush=True)
        return value

    def add(self, name: str, seconds: float, note: str = "") -> None:
        self.rows.append((name, seconds, note))
        print(f"{name:<34} {seconds:8.1f} s  {note}", flush=True)


def bench_spec(folder: Path) -> Path:
    data = yaml.safe_load(paths.default_spec().read_text())
    data["metadata"]["name"] = "bench"
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def binary_start(cluster: spec.Cluster, state: State) -> float:
    """Seconds for the heaviest binaries to start and print their version, on one node of each role."""
    provider = providers.for_cluster(cluster, state, EventBus())
    prefix = provider.command_prefix()
    hosts = {h.role: h for h in provider.hosts()}
    total = 0.0
    for role, commands in START_PROBES.items():
        host = hosts[role]
        ssh = host.ssh_argv(state.root / "ssh" / "known_hosts", prefix)
        # time measured inside the node, so SSH connection set-up is not counted
        script = "; ".join(f"s=$(date +%s.%N); {c} >/dev/null; e=$(date +%s.%N); echo $e $s" for c in commands)
        result = subprocess.run([*ssh, script], capture_output=True, text=True, check=True, timeout=300)
        for line in result.stdout.split("\n"):
            if line.strip():
                end, begin = (float(x) for x in line.split())
                total = max(total, end - begin)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-verify", action="store_true", help="leave out the verify step")
    parser.add_argument("--json", type=Path, default=Path("bench-lifecycle.json"), help="where to write the JSON")
    args = parser.parse_args()
    bench = Bench()
    bus = EventBus()

    with tempfile.TemporaryDirectory() as tmp:
        path = bench_spec(Path(tmp))
        cluster = spec.load(path)
        state = State.for_cluster(cluster.name)
        bench.step("artifacts (warm)", lambda: artifacts.ensure(cluster, bus))
        built = bench.step("box (warm)", lambda: box.build(bus))
        with LOCK.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            bench.add("floor: raw boot to SSH, 1 VM", boot_floor(built, 1))
            bench.add("floor: raw boot to SSH, 3 VMs", boot_floor(built, 3))
            provider = providers.for_cluster(cluster, state, bus)
            bench.step("machines up (1+2)", provider.create)
            bench.add("floor: binary start on a node", binary_start(cluster, state))
            first = bench.step("cluster converge", lambda: lifecycle.up(cluster, state, bus))
            again = bench.step("idempotent re-run", lambda: lifecycle.up(cluster, state, bus))
            bench.rows[-1] = (*bench.rows[-1][:2], f"{again.changed} changed (first run: {first.changed})")
            if not args.skip_verify:
                report = bench.step("verify", lambda: verify.run(cluster, state, bus))
                bench.rows[-1] = (*bench.rows[-1][:2], f"{len(report.failed)} failed")
            grown = bench.step("scale +1 worker", lambda: scaling.scale(path, 3, bus))
            untouched = {h: c for h, c in grown.changed_per_host.items() if h not in grown.plan.added}
            bench.rows[-1] = (*bench.rows[-1][:2], f"changed on existing nodes: {untouched or 'none ran'}")
            bench.step("scale -1 worker", lambda: scaling.scale(path, 2, bus))
            bench.step("destroy", lambda: lifecycle.destroy(spec.load(path), state, bus))

    print()
    print(f"{'step':<34} {'seconds':>8}  note")
    for name, seconds, note in bench.rows:
        print(f"{name:<34} {seconds:8.1f}  {note}")
    args.json.write_text(
        json.dumps([{"step": n, "seconds": round(s, 1), "note": t} for n, s, t in bench.rows], indent=2)
    )
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
