"""The Vagrant lab's pure parts: accelerator probe, ssh-config parsing, keys, generated lab settings."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from provisioner import paths, preflight, spec
from provisioner.errors import MachineError, ToolMissing
from provisioner.events import EventBus, Progress, Recorder
from provisioner.hosts import HostConnection
from provisioner.providers import for_cluster, netns
from provisioner.providers.static import StaticHosts
from provisioner.providers.vagrant import (
    VagrantLab,
    _require_vagrant,
    console_tail,
    generate_ssh_key,
    parse_ssh_config,
    probe_accelerator,
)
from provisioner.providers.vagrant_cli import VagrantCLI, parse_box_names, parse_status
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
    # emulated guests read the clock from the TSC, not from HPET (a system call per read)
    assert ("clocksource=tsc tsc=reliable" in cmdline) == (settings["driver"] == "qemu")
    key = cmdline.split("provisioner.ssh_key=")[1].split()[0]
    public = (lab.state.ssh_key.parent / "id_ed25519.pub").read_bytes().strip()
    assert base64.b64decode(key) == public


@pytest.mark.parametrize(
    ("system_libvirtd", "namespace_exists", "isolated"),
    [(False, False, True), (True, False, False), (True, True, True)],
    ids=["no-system-libvirtd", "system-libvirtd", "system-libvirtd-but-lab-namespace-exists"],
)
def test_namespace_isolation_prefixes_every_lab_command(
    lab: VagrantLab, monkeypatch: pytest.MonkeyPatch, system_libvirtd: bool, namespace_exists: bool, isolated: bool
) -> None:
    """isolation: auto uses the lab's namespace unless a system libvirtd exists and no lab namespace does."""
    assert lab.provider.isolation == "auto"
    monkeypatch.setattr(netns, "system_libvirtd_available", lambda: system_libvirtd)
    monkeypatch.setattr(netns.LabNamespace, "exists", lambda self: namespace_exists)
    ran: list[list[str]] = []

    def record(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", record)
    lab.state.vagrant_dir.mkdir(parents=True)
    lab.run_in_lab(["ip", "neigh"])
    lab.virsh.run("version")
    lab._vagrant().status()

    prefix = ["ip", "netns", "exec", "prov-lab"] if isolated else []
    assert lab.command_prefix() == prefix
    uri = "qemu:///system?socket=/run/provisioner/prov-lab/libvirt-sock" if isolated else "qemu:///system"
    assert lab.libvirt_uri == uri
    assert ran == [
        [*prefix, "ip", "neigh"],
        [*prefix, "virsh", "-c", uri, "version"],
        [*prefix, "vagrant", "status", "--machine-readable"],
    ]


# `vagrant status --machine-readable` from vagrant-libvirt: one machine running, one halted, one never made.
STATUS = """1700000000,master,metadata,provider,libvirt
1700000000,worker-1,metadata,provider,libvirt
1700000000,worker-2,metadata,provider,libvirt
1700000000,master,provider-name,libvirt
1700000000,master,state,running
1700000000,master,state-human-short,running
1700000000,master,state-human-long,The Libvirt domain is running. To stop it%!(VAGRANT_COMMA) run\\n`vagrant halt`.
1700000000,worker-1,provider-name,libvirt
1700000000,worker-1,state,shutoff
1700000000,worker-1,state-human-short,shutoff
1700000000,worker-2,provider-name,libvirt
1700000000,worker-2,state,not_created
1700000000,worker-2,state-human-short,not created
1700000000,,ui,info,Current machine states:\\n\\nmaster                    running (libvirt)
"""

# Stands in for vagrant: records where and how it ran, answers from files, fails `up` when told to.
FAKE_VAGRANT = r"""#!/bin/sh
printf '%s|%s|%s\n' "$(pwd -P)" "${FROM_PREFIX:-}" "$*" >> "$FAKE_VAGRANT_DIR/calls"
case "$1" in
  status) cat "$FAKE_VAGRANT_DIR/status" ;;
  ssh-config) cat "$FAKE_VAGRANT_DIR/ssh-config" ;;
  box) if [ "$2" = list ]; then printf '1,,box-name,provisioner/debian12\n1,,box-provider,libvirt\n'; fi ;;
  up)
    printf '==> master: Creating image (snapshot of base box volume).\n==> master:  -- Cpus:  2\n'
    printf '==> master: Starting domain.\nProgress: 50%%\rProgress: 100%%\n'
    echo "Error while creating domain: not enough memory" >&2
    exit "${FAKE_UP_EXIT:-0}" ;;
  destroy) echo "==> worker-1: Removing domain..." ;;
esac
"""


@pytest.fixture
def fake_vagrant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a fake `vagrant` first on PATH; its calls land in `calls` there."""
    folder = tmp_path / "fake-vagrant"
    folder.mkdir()
    script = folder / "vagrant"
    script.write_text(FAKE_VAGRANT)
    script.chmod(0o755)
    (folder / "status").write_text(STATUS)
    (folder / "ssh-config").write_text(SSH_CONFIG)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VAGRANT_DIR", str(folder))
    return folder


def _calls(fake_vagrant: Path) -> list[str]:
    return (fake_vagrant / "calls").read_text().splitlines()


def test_vagrant_commands_are_the_lab_prefix_then_vagrant(tmp_path: Path) -> None:
    lab_cli = VagrantCLI(["ip", "netns", "exec", "prov-lab"], tmp_path, {}, tmp_path / "vagrant.log")
    assert lab_cli.argv("status", "--machine-readable") == [
        "ip", "netns", "exec", "prov-lab", "vagrant", "status", "--machine-readable"
    ]  # fmt: skip
    assert VagrantCLI([], tmp_path, {}, tmp_path / "vagrant.log").argv("destroy", "--force") == [
        "vagrant", "destroy", "--force"
    ]  # fmt: skip


def test_each_vagrant_command_runs_behind_the_prefix_beside_the_vagrantfile(fake_vagrant: Path) -> None:
    # `env FROM_PREFIX=yes` stands in for `ip netns exec NAME`: the mark arrives only if the prefix ran first.
    cli = VagrantCLI(["env", "FROM_PREFIX=yes"], fake_vagrant, dict(os.environ), fake_vagrant / "vagrant.log")
    cli.status()
    cli.ssh_config()
    cli.ssh_config("worker-1")
    cli.box_names()
    cli.box_add("provisioner/debian12", Path("/cache/debian12.box"), "libvirt")
    list(cli.up(["master", "worker-1"], "libvirt"))
    cli.destroy("worker-1")
    cli.destroy()
    where = fake_vagrant.resolve()
    assert _calls(fake_vagrant) == [
        f"{where}|yes|{args}"
        for args in (
            "status --machine-readable",
            "ssh-config",
            "ssh-config worker-1",
            "box list --machine-readable",
            "box add provisioner/debian12 /cache/debian12.box --force --provider libvirt",
            "up --provider libvirt --no-provision master worker-1",
            "destroy worker-1 --force",
            "destroy --force",
        )
    ]
    assert "Removing domain" in (fake_vagrant / "vagrant.log").read_text(), "output not parsed goes to the log"


def test_machine_readable_status_gives_each_machines_state() -> None:
    # python-vagrant named libvirt's shutoff `poweroff`; `status` keeps showing that.
    assert parse_status(STATUS) == {"master": "running", "worker-1": "poweroff", "worker-2": "not_created"}
    virtualbox = "1,default,provider-name,virtualbox\n1,default,state,shutoff\n"
    assert parse_status(virtualbox) == {"default": "shutoff"}


def test_box_list_gives_the_box_names() -> None:
    text = "1,,box-name,generic/debian12\n1,,box-provider,libvirt\n1,,box-version,4.3.12\n1,,box-name,provisioner/x\n"
    assert parse_box_names(text) == {"generic/debian12", "provisioner/x"}


def test_up_streams_vagrants_lines_and_fails_after_the_last(
    fake_vagrant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = fake_vagrant / "vagrant.log"
    lines = list(VagrantCLI([], fake_vagrant, dict(os.environ), log).up(["master"], "libvirt"))
    assert lines == [
        "==> master: Creating image (snapshot of base box volume).",
        "==> master:  -- Cpus:  2",
        "==> master: Starting domain.",
        "Progress: 50%\rProgress: 100%",  # a progress bar's carriage returns do not end a line
    ]
    assert "not enough memory" in log.read_text(), "stderr goes to the log"
    monkeypatch.setenv("FAKE_UP_EXIT", "1")
    streamed: list[str] = []
    with pytest.raises(subprocess.CalledProcessError):
        streamed.extend(VagrantCLI([], fake_vagrant, dict(os.environ), log).up(["master"], "libvirt"))
    assert len(streamed) == 4


def _outside_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "system_libvirtd_available", lambda: True)
    monkeypatch.setattr(netns.LabNamespace, "exists", lambda self: False)


def test_status_shows_each_machine_as_vagrant_reports_it(
    lab: VagrantLab, fake_vagrant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_namespace(monkeypatch)
    generate_ssh_key(lab.state.ssh_key)
    (lab.state.vagrant_dir / "dotfiles").mkdir(parents=True)
    assert [(s.name, s.state, s.address) for s in lab.status()] == [
        ("master", "running", "192.168.56.10"),
        ("worker-1", "poweroff", "192.168.56.11"),
        ("worker-2", "not created", "192.168.56.12"),
    ]


def test_hosts_are_the_running_machines_as_their_ssh_config_says(
    lab: VagrantLab, fake_vagrant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_namespace(monkeypatch)
    generate_ssh_key(lab.state.ssh_key)
    (lab.state.vagrant_dir / "dotfiles").mkdir(parents=True)
    assert lab.hosts() == [
        HostConnection(
            "master", "master", "192.168.56.10", "192.168.121.23", 22, "root", Path("/state/lab/ssh/id_ed25519")
        )
    ]
    assert [call.split("|")[2] for call in _calls(fake_vagrant)] == ["status --machine-readable", "ssh-config master"]


def test_failed_up_names_the_machines_and_vagrants_error(
    lab: VagrantLab, fake_vagrant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_namespace(monkeypatch)
    monkeypatch.setenv("FAKE_UP_EXIT", "1")
    recorder = Recorder()
    lab.bus.subscribe(recorder)
    lab.state.vagrant_dir.mkdir(parents=True)
    with pytest.raises(MachineError) as caught:
        lab._up([lab.cluster.node("master"), lab.cluster.node("worker-1")])
    assert caught.value.what == "master, worker-1"
    assert "`vagrant up` failed" in caught.value.message() and "not enough memory" in caught.value.message()
    # Vagrant's step lines become progress; the domain settings dump and the progress bar do not.
    assert [(e.host, e.message) for e in recorder.of(Progress) if isinstance(e, Progress)] == [
        ("master", "Creating image (snapshot of base box volume)."),
        ("master", "Starting domain."),
    ]


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
    provider = StaticHosts(cluster, State(tmp_path / "state"), EventBus())
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
