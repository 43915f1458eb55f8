"""Host checks: the testinfra modules in provisioner/verify/hosts/, run by pytest in a child process.

The child runs under the lab's command prefix (so its SSH connections start inside the lab's network
namespace), reads hosts from the generated inventory's groups (``testinfra_hosts = ["ansible://masters"]``
plus ``--ansible-inventory``) and writes JUnit XML, which becomes report rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provisioner import endpoints, layout, pki
from provisioner.artifacts.layout import image_names
from provisioner.spec import Cluster
from provisioner.state import State
from provisioner.verify.hosts.helpers import FACTS_ENV
from provisioner.verify.report import FAILED, CheckResult, from_junit

HOSTS_DIR = Path(__file__).parent / "hosts"
# Selectable group -> testinfra module. Order is the order rows appear in.
MODULES = {"master": "test_master.py", "worker": "test_worker.py", "common": "test_common.py"}
TIMEOUT = 1800.0


def facts(cluster: Cluster) -> dict[str, Any]:
    """What the host modules expect, derived from the spec (the modules never read the spec)."""
    return {
        "cluster": cluster.name,
        "kubernetes_version": cluster.spec.kubernetes.version,
        "images": image_names(cluster.spec.kubernetes.version),
        "nodes": {n.name: {"role": n.role, "address": str(n.address)} for n in cluster.spec.nodes},
        # The units each node runs: some are there only with several masters (the workers' load balancer).
        "units": {
            n.name: [u.name for u in layout.installed_units(n.role, len(cluster.masters))] for n in cluster.spec.nodes
        },
        # A certificate with less than this left fails (spec.pki.renewBefore: `up` would renew it).
        "renew_before_seconds": cluster.spec.pki.margin.total_seconds(),
        "certs": {c.name: {"dns": sorted(c.dns), "ips": sorted(c.ips)} for c in pki.cluster_certs(cluster) if c.server},
        "served": served(cluster),
    }


def served(cluster: Cluster) -> dict[str, dict[str, dict[str, Any]]]:
    """Per master, where it serves its apiserver, etcd client and etcd peer certificates, and which they are:
    the apiserver on the node address, etcd where its member listens (loopback for a lone member)."""
    members = {m.name: m.address for m in endpoints.etcd_members(cluster)}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for master in cluster.masters:
        etcd = pki.etcd_certs(cluster, master)
        out[master.name] = {
            "apiserver": {"cert": "apiserver", "address": str(master.address), "port": layout.PORTS["apiserver"]},
            "etcd-server": {
                "cert": etcd["server"],
                "address": members[master.name],
                "port": layout.PORTS["etcd_client"],
            },
            "etcd-peer": {"cert": etcd["peer"], "address": members[master.name], "port": layout.PORTS["etcd_peer"]},
        }
    return out


def pytest_command(inventory: Path, junit: Path, modules: Sequence[str], sudo: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        *[str(HOSTS_DIR / MODULES[m]) for m in modules],
        f"--ansible-inventory={inventory}",
        f"--junitxml={junit}",
        f"--rootdir={HOSTS_DIR}",
        "-p",
        "no:cacheprovider",
        # The project's own pytest settings (testpaths, strict markers for tests/) do not apply here.
        "-o",
        "addopts=",
        "-o",
        "junit_family=xunit1",
        "-q",
        "--no-header",
        "-rN",
        *(["--sudo"] if sudo else []),
    ]


def run(
    cluster: Cluster,
    state: State,
    prefix: Sequence[str],
    ssh_options: Sequence[str],
    run_dir: Path,
    modules: Sequence[str],
    sudo: bool = False,
) -> list[CheckResult]:
    """Run the selected host modules; one row per test case and host."""
    run_dir.mkdir(parents=True, exist_ok=True)
    facts_file = run_dir / "host-facts.json"
    facts_file.write_text(json.dumps(facts(cluster), indent=2) + "\n")
    junit = run_dir / "hosts-junit.xml"
    log = run_dir / "hosts-pytest.log"
    env = dict(os.environ)
    env[FACTS_ENV] = str(facts_file)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the installed package free of __pycache__ from this run
    # testinfra resolves `ansible://group` with the ansible-inventory program of this environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Appended by testinfra to every ssh command it builds from the inventory (same options as verify's own).
    env["ANSIBLE_SSH_EXTRA_ARGS"] = " ".join(ssh_options)
    started = time.monotonic()
    command = [*prefix, *pytest_command(state.inventory_file, junit, modules, sudo)]
    try:
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=run_dir
        )
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        output = f"host checks did not finish within {TIMEOUT:.0f}s\n{partial}"
    log.write_text(output)
    if junit.exists():
        results = from_junit(junit.read_text(), {Path(m).stem: g for g, m in MODULES.items()})
        if results:
            return results
    # No report at all: pytest could not start or collect (inventory missing, namespace gone, ...).
    tail = " / ".join(output.strip().splitlines()[-5:])
    return [
        CheckResult(
            check=f"{group}: host checks",
            expectation=f"testinfra module {MODULES[group]} runs against the {group} hosts",
            result=FAILED,
            seconds=time.monotonic() - started,
            detail=f"pytest produced no results ({tail}); full output in {log}",
            group=group,
        )
        for group in modules
    ]
