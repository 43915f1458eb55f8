"""The Vagrant lab's pure parts: accelerator probe, ssh-config parsing, keys, generated lab settings."""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from provisioner import paths, preflight, spec
from provisioner.errors import MachineError, ToolMissing
from provisioner.events import EventBus
from provisioner.providers import for_cluster, netns
from provisioner.providers.base import HostConnection
from provisioner.providers.static import StaticHosts
from provisioner.providers.vagrant import (
    VagrantLab,
    _require_vagrant,
    console_tail,
    generate_ssh_key,
    parse_ssh_config,
    probe_accelerator,
)
from provisioner.state import State

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae vmx sse2\n"
AMD = "processor\t: 0\nflags\t\t: fpu vme svm sse2\n"
NO_VIRT = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor sse2\n"

SSH_CONFIG = """Host master
  HostName 192.168.121.23
  User root
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/state/lab/ssh/id_ed25519"
  IdentitiesOnly yes
  LogLevel FATAL

Host worker-1
  HostName 192.168.121.57
  User root
  Port 22
  IdentityFile /state/lab/ssh/id_ed25519
"""


@pytest.mark.parametrize(
    ("cpuinfo", "device", "expected"),
    [(INTEL, True, "kvm"), (AMD, True, "kvm"), (NO_VIRT, True, "qemu"), (INTEL, False, "qemu")],
    ids=["vmx", "svm", "paravirtual-kvm-without-vmx", "no-dev-kvm"],
)
def test_accelerator_is_probed(tmp_path: Path, cpuinfo: str, device: bool, expected: str) -> None:
    kvm = tmp_path / "kvm"
    if device:
        kvm.write_text("")
    assert probe_accelerator(cpuinfo, kvm) == expected


def test_ssh_config_gives_each_machine_its_address_user_and_key() -> None:
    hosts = parse_ssh_config(SSH_CONFIG)
    assert set(hosts) == {"master", "worker-1"}
    assert hosts["master"]["hostname"] == "192.168.121.23"
    assert hosts["master"]["identityfile"] == "/state/lab/ssh/id_ed25519"
    assert hosts["worker-1"]["port"] == "22" and hosts["worker-1"]["user"] == "root"


def test_ssh_key_is_ed25519_made_once(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    generate_ssh_key(key)
    first = key.read_bytes()
    generate_ssh_key(key)
    assert key.read_bytes() == first, "an existing key is kept"
    assert key.stat().st_mode & 0o777 == 0o600
    loaded = paramiko.Ed25519Key.from_private_key_file(str(key))
    assert (tmp_path / "ssh" / "id_ed25519.pub").read_text().startswith(f"ssh-ed25519 {loaded.get_base64()}")


@pytest.fixture
def lab(tmp_path: Path) -> VagrantLab:
    cluster = spec.load(paths.default_spec())
    provider = for_cluster(cluster, State(tmp_path / "lab").ensure(), EventBus())
    assert isinstance(provider, VagrantLab)
    return provider


def test_lab_settings_carry_each_nodes_identity(lab: VagrantLab) -> None:
    generate_ssh_key(lab.state.ssh_key)
    lab._write_lab_files()
    settings = json.loads(lab.lab_file.read_text())
    machines = json.loads(lab.state.machines_file.read_text())
    assert [m["name"] for m in machines] == ["master", "worker-1", "worker-2"]
    assert settings["driver"] in ("kvm", "qemu")
    assert settings["cluster_network"] == "prov-lab-nodes" and settings["pool"] == "prov-lab-pool"
    cmdline = settings["nodes"]["worker-1"]["cmdline"]
    assert "systemd.hostname=worker-1" in cmdline
    assert "provisioner.address=192.168.56.11/24" in cmdline
    key = cmdline.split("provisioner.ssh_key=")[1].split()[0]
    public = (lab.state.ssh_key.parent / "id_ed25519.pub").read_bytes().strip()
    assert base64.b64decode(key) == public


def test_namespace_isolation_prefixes_every_lab_command(lab: VagrantLab) -> None:
    assert lab.provider.isolation == "auto"
    if not netns.system_libvirtd_available():
        assert lab.command_prefix() == ["ip", "netns", "exec", "prov-lab"]


def test_node_subnet_may_not_overlap_the_management_network(tmp_path: Path) -> None:
    # The spec validator refuses such a spec first (test_spec_hostile); this is the provider's own guard,
    # so the cluster is built past the validator.
    cluster = spec.load(paths.default_spec())
    network = cluster.spec.network.model_copy(update={"node_subnet": ipaddress.IPv4Network("192.168.121.0/24")})
    cluster = cluster.model_copy(update={"spec": cluster.spec.model_copy(update={"network": network})})
    provider = for_cluster(cluster, State(tmp_path / "lab"), EventBus())
    assert isinstance(provider, VagrantLab)
    with pytest.raises(MachineError, match="overlaps Vagrant's management network"):
        provider._check_subnets()


@pytest.mark.skipif(shutil.which("ruby") is None, reason="needs ruby (comes with vagrant)")
def test_vagrantfile_is_valid_ruby() -> None:
    proc = subprocess.run(
        ["ruby", "-c", str(paths.REPO_ROOT / "Vagrantfile")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def _host(port: int, key: Path) -> HostConnection:
    return HostConnection("worker-9", "worker", "192.168.56.99", "127.0.0.1", port, "root", key)


def test_preflight_names_unreachable_hosts_with_address_and_reason(tmp_path: Path) -> None:
    port = _free_loopback_port()
    with pytest.raises(MachineError) as caught:
        preflight.check([_host(port, tmp_path / "key")], [])
    message = caught.value.message()
    assert f"worker-9 (127.0.0.1:{port})" in message
    assert "SSH port unreachable" in message


@pytest.mark.parametrize(
    ("output", "user", "ok", "reason"),
    [
        ("0\nsudo=no\npython=3.11\n", "root", True, ""),
        ("1000\nsudo=yes\npython=3.11\n", "vagrant", True, ""),
        ("1000\nsudo=no\npython=3.11\n", "vagrant", False, "not root"),
        ("0\nsudo=yes\npython=none\n", "root", False, "python3 is not installed"),
    ],
    ids=["root", "sudo", "no-sudo", "no-python"],
)
def test_preflight_judges_root_sudo_and_python(output: str, user: str, ok: bool, reason: str) -> None:
    host = HostConnection("n", "worker", "a", "h", 22, user, Path("k"))
    result = preflight._judge(host, "h:22", output)
    assert result.ok is ok and reason in result.reason


def test_static_hosts_come_from_the_spec(tmp_path: Path) -> None:
    key = tmp_path / "id"
    generate_ssh_key(key)  # the validator refuses what ssh would: a fake or group-readable key
    data = {
        "apiVersion": "provisioner.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "metal"},
        "spec": {
            "provider": {"type": "static"},
            "network": {"nodeSubnet": "10.0.0.0/24", "podSubnet": "10.244.0.0/16"},
            "nodes": [
                {"name": "m", "role": "master", "address": "10.0.0.2", "ssh": {"key": "id", "user": "admin"}},
                {"name": "w", "role": "worker", "address": "10.0.0.3", "ssh": {"key": str(key), "port": 2222}},
            ],
        },
    }
    cluster = spec.parse(data, base_dir=tmp_path)
    provider = StaticHosts(cluster, State(tmp_path / "state"), EventBus(), spec_file=tmp_path / "cluster.yaml")
    hosts = {h.name: h for h in provider.hosts()}
    assert hosts["m"].ssh_key == key and hosts["m"].ssh_user == "admin" and hosts["m"].ssh_port == 22
    assert hosts["w"].ssh_host == "10.0.0.3" and hosts["w"].ssh_port == 2222 and hosts["w"].ssh_user == "root"


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_console_tail_is_the_last_lines_without_colour_codes(tmp_path: Path) -> None:
    log = tmp_path / "master.log"
    lines = [f"[  {i}.0] line {i}" for i in range(100)]
    lines.append("[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mgetty.target\x1b[0m - Login Prompts.")
    log.write_text("\n".join(lines) + "\n\n")
    tail = console_tail(log, lines=3).splitlines()
    assert tail == ["[  98.0] line 98", "[  99.0] line 99", "[  OK  ] Reached target getty.target - Login Prompts."]
    assert "no console log" in console_tail(tmp_path / "missing.log")


def test_missing_vagrant_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(ToolMissing, match="apt-get install vagrant vagrant-libvirt"):
        _require_vagrant("libvirt")


def test_missing_libvirt_daemon_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool in ("libvirtd", "virtlogd") else f"/usr/bin/{tool}")
    with pytest.raises(ToolMissing, match="apt-get install libvirt-daemon"):
        netns._require_tools()
