"""Real lab machines: the default spec's 3 VMs come up, answer Ansible, show in status, and destroy
leaves nothing behind (run twice). The static provider is proven against the same VMs.

Holds /tmp/provisioner-lab.lock for the whole module: only one lab may run on a machine at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import hosts, inventory, paths, preflight, processes, spec
from provisioner.events import EventBus, Recorder
from provisioner.providers import for_cluster, netns
from provisioner.providers.vagrant import VagrantLab
from provisioner.state import State

pytestmark = pytest.mark.lab

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def lab(lab_lock: None) -> Iterator[VagrantLab]:
    cluster = spec.load(paths.default_spec())
    # Not under pytest's basetemp: other pytest runs on the machine prune old basetemps, and the VMs' disks
    # must not vanish under a running lab.
    root = Path(tempfile.mkdtemp(prefix="provisioner-lab-test-"))
    state = State(root / cluster.name).ensure()
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    provider = for_cluster(cluster, state, bus)
    assert isinstance(provider, VagrantLab)
    # A lab left by an earlier, killed run must not make this one fail.
    provider.destroy()
    provider.create()
    try:
        yield provider
    finally:
        provider.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_up_brings_every_node_up_reachable_over_ssh(lab: VagrantLab) -> None:
    hosts = {h.name: h for h in lab.hosts()}
    assert set(hosts) == {"master", "worker-1", "worker-2"}
    assert all(h.ssh_key == lab.state.ssh_key for h in hosts.values())
    preflight.check(list(hosts.values()), lab.command_prefix())


def test_ansible_ping_answers_from_every_node(lab: VagrantLab, tmp_path: Path) -> None:
    inventory.write(lab.cluster, lab.state, lab.hosts(), tmp_path / "artifacts")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False"}
    proc = subprocess.run(
        [*lab.command_prefix(), str(VENV_BIN / "ansible"), "all", "-i", str(lab.state.inventory_file), "-m", "ping"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("master", "worker-1", "worker-2"):
        assert f"{name} | SUCCESS" in proc.stdout


def test_nodes_have_their_spec_address_and_hostname(lab: VagrantLab) -> None:
    for host in lab.hosts():
        options = hosts.ssh_options(lab.state.known_hosts, strict=False)
        proc = lab.run_in_lab([*host.ssh_argv(options), "hostname; ip -4 -o addr show dev eth1"], timeout=120)
        assert proc.stdout.splitlines()[0] == host.name
        assert f"inet {host.address}/24" in proc.stdout


def test_status_lists_each_machine_running_with_its_address(lab: VagrantLab) -> None:
    rows = {s.name: s for s in lab.status()}
    assert {name: (s.state, s.address) for name, s in rows.items()} == {
        "master": ("running", "192.168.56.10"),
        "worker-1": ("running", "192.168.56.11"),
        "worker-2": ("running", "192.168.56.12"),
    }


def test_static_provider_reaches_the_lab_vms(lab: VagrantLab, tmp_path: Path) -> None:
    """A static spec naming the VMs' cluster addresses, used from inside the lab's namespace."""
    data = {
        "apiVersion": "provisioner.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "metal"},
        "spec": {
            "provider": {"type": "static"},
            "network": {"nodeSubnet": "192.168.56.0/24"},
            "nodes": [
                {"name": n.name, "role": n.role, "address": str(n.address), "ssh": {"key": str(lab.state.ssh_key)}}
                for n in lab.cluster.spec.nodes
            ],
        },
    }
    spec_file = tmp_path / "static.yaml"
    spec_file.write_text(json.dumps(data))
    script = (
        "import json, sys; from pathlib import Path\n"
        "from provisioner import spec; from provisioner.events import EventBus; from provisioner.state import State\n"
        "from provisioner.providers.static import StaticHosts\n"
        f"c = spec.load(Path({str(spec_file)!r}))\n"
        f"p = StaticHosts(c, State(Path({str(tmp_path / 'state')!r})), EventBus())\n"
        "p.create()\n"
        "json.dump([[s.name, s.state, s.address] for s in p.status()], sys.stdout)\n"
    )
    proc = lab.run_in_lab([sys.executable, "-c", script], timeout=600)
    assert json.loads(proc.stdout) == [
        ["master", "reachable", "192.168.56.10"],
        ["worker-1", "reachable", "192.168.56.11"],
        ["worker-2", "reachable", "192.168.56.12"],
    ]


def test_destroy_twice_leaves_nothing_behind(lab: VagrantLab) -> None:
    """Runs last in the module: the fixture's final destroy is then a third, harmless one."""
    lab.destroy()
    lab.destroy()
    assert netns.namespace_name(lab.cluster.name) not in netns.list_namespaces()
    assert not _processes({"libvirtd", "virtlogd", "dnsmasq", "qemu-system-x86"})
    vdir = lab.state.vagrant_dir
    assert not (vdir / "dotfiles").exists() and not (vdir / "pool").exists()
    assert [s.state for s in lab.status()] == ["not created"] * 3


def _processes(names: set[str]) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                comm = (proc / "comm").read_text().strip()
            except OSError:
                continue
            # an exited daemon stays a zombie until PID 1 reaps it (slowly, on machines without systemd)
            if comm in names and processes.alive(int(proc.name)):
                found.append(f"{proc.name}:{comm}")
    return found
