"""Artifact figures: build wall time and peak memory, warm no-op time, verify time, sizes.

    .venv/bin/python bench/artifacts.py [--version v1.37.2] [--cache-dir DIR] [--cold]

--cold removes the version's set, its wrapper modules and the Go module and build caches under the
cache directory first (not Go caches the user points GOMODCACHE/GOCACHE elsewhere), so the build
downloads and compiles everything. Run it under `nice -n 10` when VMs share the machine.
Prints one line per figure, then a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path

from provisioner import artifacts
from provisioner.artifacts import build
from provisioner.artifacts.layout import ArtifactSet
from provisioner.events import EventBus, PhaseFinished
from provisioner.paths import cache_root
from provisioner.versions import DEFAULT_KUBERNETES


class MemorySampler:
    """Peak system-wide memory in use (MemTotal - MemAvailable) above the level at start."""

    def __init__(self) -> None:
        self.baseline = self.used()
        self.peak = self.baseline
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def used() -> int:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) * 1024
        return fields["MemTotal"] - fields["MemAvailable"]

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.peak = max(self.peak, self.used())

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=DEFAULT_KUBERNETES)
    parser.add_argument("--cache-dir", type=Path, default=cache_root() / "artifacts")
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()
    aset = ArtifactSet(args.cache_dir / args.version, args.version)
    results: dict[str, object] = {"version": args.version, "cores": os.cpu_count()}

    if args.cold:
        go_caches = args.cache_dir / ".go"
        if go_caches.exists():  # module cache files are read-only: let go remove them
            env = build.go_env(args.cache_dir)
            subprocess.run([str(build.find_go()), "clean", "-modcache"], env=env, check=False)
        for path in (aset.root, args.cache_dir / ".work", go_caches):
            shutil.rmtree(path, ignore_errors=True)

    phases: dict[str, float] = {}
    bus = EventBus()
    bus.subscribe(lambda e: phases.__setitem__(e.phase, round(e.seconds, 1)) if isinstance(e, PhaseFinished) else None)
    with MemorySampler() as memory:
        started = time.monotonic()
        build.build(aset, bus)
        first = time.monotonic() - started
    peak_process = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    results["first_run_s"] = round(first, 1)
    results["components_s"] = {k.removeprefix("build "): v for k, v in phases.items() if k != "artifacts"}
    results["peak_process_rss_mib"] = round(peak_process / 2**20)
    results["peak_system_memory_above_start_mib"] = round((memory.peak - memory.baseline) / 2**20)

    started = time.monotonic()
    build.build(aset, EventBus())
    results["warm_no_op_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    problems = artifacts.problems(aset)
    results["verify_s"] = round(time.monotonic() - started, 2)
    results["complete"] = not problems
    results["set_mib"] = round(size(aset.root) / 2**20)
    results["set_files"] = len(artifacts.expected_paths())
    for name, path in (
        ("go_module_cache_mib", args.cache_dir / ".go" / "mod"),
        ("go_build_cache_mib", args.cache_dir / ".go" / "build"),
    ):
        if path.exists():
            results[name] = round(size(path) / 2**20)
    for key, value in results.items():
        print(f"{key:<38} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
