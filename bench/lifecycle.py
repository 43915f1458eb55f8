"""The whole lifecycle of the default lab, one figure per step, with the floor measured in the same run.

    .venv/bin/python bench/lifecycle.py [--skip-verify | --floor-only] [--json FILE]

Steps: artifacts (warm), box (warm), machines up, cluster converge, idempotent re-run, verify, scale +1
worker (2 -> 3), scale -1 worker (3 -> 2), scale -1 worker (2 -> 1), destroy; after each scale step the
checks in AFTER_STEP run again (hosts, nodes Ready, system pods, DNS). Floor: raw VM boot to SSH (plain
QEMU, 1 VM and 3 together) and the start of the binaries on a booted node. Runs on a copy of the default
spec named `bench`, so it never touches the `lab` cluster's state; holds /tmp/provisioner-lab.lock while
VMs run, and destroys the bench cluster at the end even when a step failed. Prints a table and keeps a
JSON copy up to date after every step. A script whose figures we compare, not a timed test.
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

from provisioner import artifacts, box, hosts, lifecycle, paths, providers, scaling, spec, verify
from provisioner.cli.render import cli_bus
from provisioner.events import EventBus
from provisioner.state import State

LOCK = Path("/tmp/provisioner-lab.lock")
# Binaries whose start-up is timed on a freshly booted node: the heaviest starters of each role.
START_PROBES = {
    "master": ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"],
    "worker": ["containerd", "kubelet", "kube-proxy"],
}
FLOOR_DIR = "/var/tmp/provisioner-floor"
# What must hold after every scale step: the hosts' services, every worker Ready, system pods, Service DNS.
AFTER_STEP = ["hosts", "nodes-ready", "system-pods", "dns"]


class Bench:
    """Rows of (step, seconds, note); the JSON copy is rewritten after every row, so a run that dies
    part-way keeps the figures it had."""

    def __init__(self, json_path: Path) -> None:
        self.rows: list[tuple[str, float, str]] = []
        self.json_path = json_path

    def note(self, text: str) -> None:
        self.rows[-1] = (*self.rows[-1][:2], text)
        self.save()

    def save(self) -> None:
        rows = [{"step": n, "seconds": round(s, 1), "note": t} for n, s, t in self.rows]
        self.json_path.write_text(json.dumps(rows, indent=2) + "\n")

    def step(self, name: str, fn: Callable[[], Any], note: str = "") -> Any:
        started = time.monotonic()
        value = fn()
        seconds = time.monotonic() - started
        self.rows.append((name, seconds, note))
        self.save()
        print(f"BENCH {name:<34} {seconds:8.1f} s  {note}", flush=True)
        return value

    def add(self, name: str, seconds: float, note: str = "") -> None:
        self.rows.append((name, seconds, note))
        self.save()
        print(f"BENCH {name:<34} {seconds:8.1f} s  {note}", flush=True)


def bench_spec(folder: Path) -> Path:
    data = yaml.safe_load(paths.default_spec().read_text())
    data["metadata"]["name"] = "bench"
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def binary_start(cluster: spec.Cluster, state: State) -> tuple[float, str]:
    """Seconds for the slowest binary to start and print its version on a booted node, and each binary's.

    The binaries are first copied from the artifact set into a scratch directory on one node of each role
    (not timed), so this runs on the fresh machines, before any playbook, and measures only the start.
    """
    provider = providers.for_cluster(cluster, state, EventBus())
    prefix = provider.command_prefix()
    # The machines were just made and no `up` has run yet: their SSH details come from the provider.
    by_role = {h.role: h for h in provider.hosts()}
    options = hosts.ssh_options(state.known_hosts, strict=False, control_dir=state.ssh_control_dir)
    bin_dir = artifacts.artifact_set(cluster).bin
    seconds: dict[str, float] = {}
    for role, names in START_PROBES.items():
        ssh = by_role[role].ssh_argv(options, prefix)
        for name in names:
            with (bin_dir / name).open("rb") as source:
                subprocess.run(
                    [*ssh, f"mkdir -p {FLOOR_DIR} && cat > {FLOOR_DIR}/{name} && chmod 0755 {FLOOR_DIR}/{name}"],
                    stdin=source,
                    check=True,
                    timeout=600,
                )
        # timed inside the node, so SSH set-up is not counted; set -e: a binary that fails to run fails the step
        script = "set -e; " + "; ".join(
            f"s=$(date +%s.%N); {FLOOR_DIR}/{n} --version >/dev/null; e=$(date +%s.%N); echo {n} $s $e" for n in names
        )
        result = subprocess.run([*ssh, f"{script}; rm -rf {FLOOR_DIR}"], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"binary start on {by_role[role].name} failed: {result.stderr.strip()}")
        for line in result.stdout.splitlines():
            name, begin, end = line.split()
            seconds[name] = float(end) - float(begin)
    return max(seconds.values()), ", ".join(f"{n} {t:.2f}s" for n, t in seconds.items())


def after_step(bench: Bench, path: Path, state: State, bus: EventBus, skip: bool) -> None:
    """The checks that must hold after every scale step (the whole suite runs once, after converge)."""
    if skip:
        return
    workers = len(spec.load(path).workers)
    report = bench.step(
        f"  verify after ({workers} worker(s))", lambda: verify.run(spec.load(path), state, bus, select=AFTER_STEP)
    )
    bench.note(summary(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-verify", action="store_true", help="leave out the verify step")
    parser.add_argument("--floor-only", action="store_true", help="only the floor: boot, machines, binary start")
    parser.add_argument("--json", type=Path, default=Path("bench-lifecycle.json"), help="where to write the JSON")
    args = parser.parse_args()
    bench = Bench(args.json)
    bus, _ = cli_bus()  # phase, task, host and elapsed time on the terminal while it runs

    with tempfile.TemporaryDirectory() as tmp:
        path = bench_spec(Path(tmp))
        cluster = spec.load(path)
        state = State.for_cluster(cluster.name)
        bench.step("artifacts (warm)", lambda: artifacts.ensure(cluster, bus))
        built = bench.step("box (warm)", lambda: box.build(bus))
        with LOCK.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                lifecycle_steps(bench, path, built, bus, args.skip_verify, args.floor_only)
            finally:
                # nothing of the bench cluster outlives the run, even when a step failed
                lifecycle.destroy(spec.load(path), state, EventBus())

    print()
    print(f"{'step':<34} {'seconds':>8}  note")
    for name, seconds, note in bench.rows:
        print(f"{name:<34} {seconds:8.1f}  {note}")
    print(f"JSON: {args.json}")


def lifecycle_steps(
    bench: Bench, path: Path, built: Path, bus: EventBus, skip_verify: bool, floor_only: bool = False
) -> None:
    cluster = spec.load(path)
    state = State.for_cluster(cluster.name)
    bench.add("floor: raw boot to SSH, 1 VM", boot_floor(built, 1))
    bench.add("floor: raw boot to SSH, 3 VMs", boot_floor(built, 3))
    provider = providers.for_cluster(cluster, state, bus)
    bench.step("machines up (1+2)", provider.create)
    slowest, each = binary_start(cluster, state)
    bench.add("floor: binary start on a node", slowest, each)
    if floor_only:
        return
    first = bench.step("cluster converge", lambda: lifecycle.up(cluster, state, bus))
    bench.note(f"changed per host: {per_host(first)}")
    again = bench.step("idempotent re-run", lambda: lifecycle.up(cluster, state, bus))
    bench.note(f"changed per host: {per_host(again)}")
    if not skip_verify:
        report = bench.step("verify (every check)", lambda: verify.run(cluster, state, bus))
        bench.note(summary(report))
    grown = bench.step("scale +1 worker (2 -> 3)", lambda: scaling.scale(path, 3, bus))
    bench.note(f"changed per host in the run: {grown.changed_per_host}")
    after_step(bench, path, state, bus, skip_verify)
    bench.step("scale -1 worker (3 -> 2)", lambda: scaling.scale(path, 2, bus))
    after_step(bench, path, state, bus, skip_verify)
    bench.step("scale -1 worker (2 -> 1)", lambda: scaling.scale(path, 1, bus))
    after_step(bench, path, state, bus, skip_verify)
    bench.step("destroy", lambda: lifecycle.destroy(spec.load(path), state, bus))


def summary(report: verify.VerifyReport) -> str:
    failed = "; ".join(f"{r.check}: {r.detail}" for r in report.failed)
    return f"{len(report.results)} rows, {len(report.failed)} failed {failed}".strip()


def per_host(result: lifecycle.UpResult) -> dict[str, int]:
    return {name: stats.changed for name, stats in result.run.hosts.items()}


if __name__ == "__main__":
    main()
