"""Lab VMs: Vagrant with vagrant-libvirt, driven through its command line, isolated in a network namespace.

The top-level Vagrantfile defines the VMs from two generated JSON files (the machine list and the lab
settings). Vagrant runs with its home and dotfiles under the cluster's state directory, and, when the lab
is isolated, inside the lab's network namespace with a private libvirtd. The inventory comes from
`vagrant ssh-config`, never from guessed ports or addresses.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioner import box, inventory, paths
from provisioner.errors import MachineError, ToolMissing
from provisioner.events import Phase, Progress
from provisioner.hosts import HostConnection
from provisioner.providers import libvirt, netns
from provisioner.providers.base import MachineStatus, Provider
from provisioner.providers.vagrant_cli import VagrantCLI
from provisioner.spec import VAGRANT_MANAGEMENT_SUBNET, Node, VagrantProvider

# The validator refuses node, pod and service subnets that overlap it (spec.py owns the fact).
MANAGEMENT_SUBNET = VAGRANT_MANAGEMENT_SUBNET
# Bounds for waiting on a VM to answer SSH: emulated boots take about a minute each, several at once
# share two cores (LAB-NOTES); KVM boots take seconds.
BOOT_TIMEOUT = {"qemu": 600, "kvm": 300}
# Kernel parameters by accelerator, after the box's own. Under emulation the guest finds its vCPUs' TSCs
# "unsynchronized" (the boot-time check is timing-based and emulation is slow) and falls back to HPET, which
# the vDSO cannot read: every clock read becomes a system call. Go programs read the clock all the time
# (etcd spent 17% of its CPU in runtime.nanotime on the emulated default lab). QEMU's emulated TSC is the
# host's, one clock for every vCPU, so it is trusted as it is. KVM guests use kvm-clock.
KERNEL_PARAMETERS = {"qemu": "clocksource=tsc tsc=reliable", "kvm": ""}
CONSOLE_TAIL_LINES = 25


def probe_accelerator(cpuinfo: str | None = None, kvm_device: Path = Path("/dev/kvm")) -> str:
    """`kvm` when the CPU offers hardware virtualization (vmx/svm) and /dev/kvm is usable, else `qemu`.

    /dev/kvm alone is not enough: some hosts expose a paravirtual KVM without vmx/svm on which stock guest
    kernels never boot (LAB-NOTES).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    usable = kvm_device.exists() and os.access(kvm_device, os.R_OK | os.W_OK)
    return "kvm" if usable and flags & {"vmx", "svm"} else "qemu"


def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    """`vagrant ssh-config` output to {host: {option: value}} (option names lowercased)."""
    hosts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip().strip('"')
        if key.lower() == "host":
            current = hosts.setdefault(value, {})
        elif current is not None:
            current[key.lower()] = value
    return hosts


def console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no console log at {path})"
    # systemd colours its status lines; the escapes would garble an error message.
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    tail = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail) or f"(console log {path} is empty)"


def generate_ssh_key(private: Path) -> None:
    """A per-cluster ed25519 key pair, made once and kept with the cluster's state."""
    if private.is_file():
        return
    private.parent.mkdir(parents=True, exist_ok=True)
    private.parent.chmod(0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    tmp = private.with_suffix(".tmp")
    tmp.write_bytes(pem)
    tmp.chmod(0o600)
    tmp.rename(private)
    private.with_name(private.name + ".pub").write_bytes(public + b" provisioner\n")


class VagrantLab(Provider):
    @property
    def provider(self) -> VagrantProvider:
        spec = self.cluster.spec.provider
        assert isinstance(spec, VagrantProvider)
        return spec

    # --- where things live --------------------------------------------------------------------------

    @property
    def namespace(self) -> netns.LabNamespace:
        return netns.LabNamespace(
            netns.namespace_name(self.cluster.name), self.state.vagrant_dir / "libvirt", visible=self.state.vagrant_dir
        )

    @property
    def isolated(self) -> bool:
        """Namespace unless the user said none, or (auto) a system libvirtd exists and no lab namespace does."""
        mode = self.provider.isolation
        if self.provider.backend != "libvirt":
            # VirtualBox VMs cannot be moved into a namespace; its host-only network is the boundary.
            return False
        if mode != "auto":
            return mode == "namespace"
        if self.namespace.exists():
            return True
        return not netns.system_libvirtd_available()

    @property
    def libvirt_uri(self) -> str:
        return self.namespace.uri if self.isolated else netns.SYSTEM_URI

    def command_prefix(self) -> list[str]:
        return self.namespace.prefix if self.isolated else []

    def lab_namespace(self) -> str | None:
        return self.namespace.name if self.isolated else None

    def power_off(self, node: Node) -> None:
        if self.provider.backend != "libvirt":
            super().power_off(node)
        self.virsh.run("destroy", f"{self.names['prefix']}{node.name}")  # libvirt's word for pulling the plug

    @property
    def virsh(self) -> libvirt.Virsh:
        return libvirt.Virsh(self.libvirt_uri, self.command_prefix())

    def artifact_server_address(self) -> str:
        # The host's own address on the management network, which libvirt gives the bridge: every VM has
        # a leg there (Vagrant's SSH goes through it), and it has no route out.
        return str(next(MANAGEMENT_SUBNET.hosts()))

    def run_in_lab(
        self, command: list[str], timeout: float | None = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command where the lab is reachable (inside its namespace when isolated)."""
        return netns.run(self.command_prefix(), command, timeout=timeout, check=check)

    @property
    def accelerator(self) -> str:
        chosen = self.provider.accelerator
        return probe_accelerator() if chosen == "auto" else chosen

    @property
    def names(self) -> dict[str, str]:
        base = f"prov-{self.cluster.name}"
        return {
            "prefix": f"{base}-",
            "pool": f"{base}-pool",
            "management_network": f"{base}-mgmt",
            "cluster_network": f"{base}-nodes",
        }

    @property
    def own_box(self) -> bool:
        return self.provider.box == box.BOX_NAME

    def console_log(self, name: str) -> Path:
        return self.state.vagrant_dir / "console" / f"{name}.log"

    @property
    def lab_file(self) -> Path:
        return self.state.vagrant_dir / "lab.json"

    def _vagrant(self) -> VagrantCLI:
        vdir = self.state.vagrant_dir
        env = dict(os.environ)
        env.update(
            {
                "VAGRANT_HOME": str(vdir / "home"),
                "VAGRANT_DOTFILE_PATH": str(vdir / "dotfiles"),
                "VAGRANT_DEFAULT_PROVIDER": self.provider.backend,
                "VAGRANT_CHECKPOINT_DISABLE": "1",  # no version check: the lab has no way out
                "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
                "PROVISIONER_MACHINES": str(self.state.machines_file),
                "PROVISIONER_LAB": str(self.lab_file),
            }
        )
        # Vagrant's own output goes to a log beside the lab, read back for error messages: the core never prints.
        return VagrantCLI(self.command_prefix(), paths.REPO_ROOT, env, self.vagrant_log)

    @property
    def vagrant_log(self) -> Path:
        return self.state.vagrant_dir / "vagrant.log"

    def _log_tail(self, lines: int = 12) -> str:
        try:
            text = self.vagrant_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])

    # --- create -------------------------------------------------------------------------------------

    def create(self, nodes: list[Node] | None = None) -> list[HostConnection]:
        targets = nodes or list(self.cluster.spec.nodes)
        with Phase(self.bus, "machines", f"{len(targets)} VM(s), {self.accelerator}") as phase:
            _require_vagrant(self.provider.backend)
            generate_ssh_key(self.state.ssh_key)
            if self.own_box:
                built = box.build(self.bus)
            if self.isolated:
                phase.progress(f"network namespace {self.namespace.name} with private libvirtd")
                self.namespace.ensure()
            self._write_lab_files()
            if self.provider.backend == "libvirt":
                libvirt.ensure_pool(self.virsh, self.names["pool"], self.state.vagrant_dir / "pool")
            if self.own_box:
                self._add_box(built)
            else:
                self._require_named_box()
            phase.progress("vagrant up " + " ".join(n.name for n in targets))
            self._up(targets)
        with Phase(self.bus, "ssh-config"):
            hosts = self.hosts()
        missing = {n.name for n in targets} - {h.name for h in hosts}
        if missing:
            raise MachineError(
                ", ".join(sorted(missing)), "Vagrant reports no SSH details after `up`", self._console_hint(missing)
            )
        return hosts

    def _write_lab_files(self) -> None:
        inventory.write_machine_list(self.cluster, self.state)
        vdir = self.state.vagrant_dir
        (vdir / "console").mkdir(parents=True, exist_ok=True)
        subnet = self.cluster.spec.network.node_subnet
        accel = self.accelerator
        lab: dict[str, Any] = {
            **self.names,
            "pool_path": str(vdir / "pool"),
            "driver": accel,
            "libvirt_uri": self.libvirt_uri,
            "boot_timeout": BOOT_TIMEOUT[accel],
            "netmask": str(subnet.netmask),
            "management_subnet": str(MANAGEMENT_SUBNET),
            "ssh_key": str(self.state.ssh_key),
            "ssh_user": "root",
            "nodes": {},
        }
        if self.own_box:
            public = self.state.ssh_key.with_name(self.state.ssh_key.name + ".pub").read_bytes().strip()
            key_b64 = base64.b64encode(public).decode()
            for node in self.cluster.spec.nodes:
                lab["nodes"][node.name] = {
                    "cmdline": (
                        f"{box.RECIPE.kernel_cmdline} {KERNEL_PARAMETERS[accel]} systemd.hostname={node.name} "
                        f"provisioner.address={node.address}/{subnet.prefixlen} provisioner.ssh_key={key_b64}"
                    ),
                    "console_log": str(self.console_log(node.name)),
                }
        else:
            # A public box carries Vagrant's insecure key and lets Vagrant insert a fresh one.
            del lab["ssh_key"], lab["ssh_user"]
        self.lab_file.write_text(json.dumps(lab, indent=2) + "\n")

    def _add_box(self, built: box.Box) -> None:
        """Add the cached box to this cluster's private Vagrant home, once per box digest."""
        marker = self.state.vagrant_dir / "home" / "provisioner-box.digest"
        if marker.is_file() and marker.read_text().strip() == built.digest:
            return
        self.bus.emit(Progress("machines", f"adding box {built.name} ({built.digest})"))
        try:
            self._vagrant().box_add(built.name, built.path, "libvirt")
        except subprocess.CalledProcessError as exc:
            raise MachineError(
                f"box {built.name}", f"`vagrant box add {built.path}` failed ({exc.returncode})"
            ) from None
        marker.write_text(built.digest + "\n")

    def _require_named_box(self) -> None:
        if self.provider.box not in self._vagrant().box_names():
            raise MachineError(
                f"box {self.provider.box}",
                "is not in this lab's Vagrant home and the lab cannot download it",
                f"add it first: VAGRANT_HOME={self.state.vagrant_dir / 'home'} vagrant box add {self.provider.box} "
                f"(or use the offline box: set spec.provider.box to {box.BOX_NAME})",
            )

    def _up(self, targets: list[Node]) -> None:
        try:
            for line in self._vagrant().up([n.name for n in targets], self.provider.backend):
                if line.startswith("==> ") and ":" in line:
                    host, _, message = line[4:].partition(":")
                    message = message.strip()
                    # Vagrant's step lines only; the domain settings dump ("-- Cpus: 1", ...) is in the log.
                    if message and not message.startswith("--") and not message[0].islower():
                        self.bus.emit(Progress("machines", message, host.strip()))
        except subprocess.CalledProcessError:
            names = {n.name for n in targets}
            raise MachineError(
                ", ".join(sorted(names)),
                f"`vagrant up` failed (log: {self.vagrant_log}):\n{self._log_tail()}",
                self._console_hint(names),
            ) from None

    def _console_hint(self, names: set[str]) -> str:
        if not self.own_box:
            return "see `vagrant up` output above"
        parts = [
            f"console of {name} ({self.console_log(name)}):\n{console_tail(self.console_log(name))}"
            for name in sorted(names)
        ]
        return "\n".join(parts)

    # --- inspect ------------------------------------------------------------------------------------

    def _machine_states(self) -> dict[str, str]:
        if not (self.state.vagrant_dir / "dotfiles").is_dir() or not self._lab_reachable():
            return {}
        self._write_lab_files()
        # Vagrant's machine-readable names ("not_created") read as this tool's ("not created")
        return {name: state.replace("_", " ") for name, state in self._vagrant().status().items()}

    def _lab_reachable(self) -> bool:
        return self.namespace.running() if self.isolated else True

    def hosts(self) -> list[HostConnection]:
        states = self._machine_states()
        running = [n for n in self.cluster.spec.nodes if states.get(n.name) == "running"]
        if not running:
            return []
        v = self._vagrant()
        if len(running) == len(self.cluster.spec.nodes):
            configs = parse_ssh_config(v.ssh_config())
        else:
            configs = {}
            for node in running:
                configs.update(parse_ssh_config(v.ssh_config(node.name)))
        hosts = []
        for node in running:
            conf = configs.get(node.name)
            if conf is None:
                continue
            hosts.append(
                HostConnection(
                    name=node.name,
                    role=node.role,
                    address=str(node.address),
                    ssh_host=conf["hostname"],
                    ssh_port=int(conf.get("port", "22")),
                    ssh_user=conf.get("user", "root"),
                    ssh_key=Path(conf["identityfile"]),
                )
            )
        return hosts

    def status(self) -> list[MachineStatus]:
        states = self._machine_states()
        return [
            MachineStatus(n.name, n.role, states.get(n.name, "not created"), str(n.address))
            for n in self.cluster.spec.nodes
        ]

    # --- destroy ------------------------------------------------------------------------------------

    def destroy(self, nodes: list[Node] | None = None) -> None:
        with Phase(self.bus, "destroy", "named VMs" if nodes else "the whole lab") as phase:
            if nodes:
                if self._lab_reachable():
                    self._write_lab_files()
                    v = self._vagrant()
                    for node in nodes:
                        phase.progress("vagrant destroy", node.name)
                        v.destroy(node.name)
                        if self.isolated:
                            netns.forget_neighbour(self.command_prefix(), str(node.address))
                return
            isolated = self.isolated
            if isolated and self.namespace.exists():
                # Start the daemons if a killed run left the namespace without them, to undefine cleanly.
                self.namespace.ensure()
            if self._lab_reachable() and self.state.machines_file.is_file():
                if (self.state.vagrant_dir / "dotfiles").is_dir():
                    phase.progress("vagrant destroy")
                    self._write_lab_files()
                    try:
                        self._vagrant().destroy()
                    except subprocess.CalledProcessError as exc:
                        phase.progress(f"vagrant destroy failed ({exc.returncode}); removing libvirt objects directly")
                if self.provider.backend == "libvirt":
                    names = self.names
                    libvirt.remove_lab_objects(
                        self.virsh,
                        names["prefix"],
                        [names["management_network"], names["cluster_network"]],
                        names["pool"],
                        phase.progress,
                    )
            if isolated:
                phase.progress(f"stopping libvirtd/virtlogd, deleting namespace {self.namespace.name}")
                self.namespace.delete()
            for leftover in ("dotfiles", "pool", "console", "libvirt", "lab.json"):
                path = self.state.vagrant_dir / leftover
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _require_vagrant(backend: str) -> None:
    if shutil.which("vagrant") is None:
        raise ToolMissing("vagrant", "not installed", "apt-get install vagrant vagrant-libvirt (Debian 12)")
    if backend == "libvirt":
        plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, check=False).stdout
        if "vagrant-libvirt" not in plugins:
            raise ToolMissing(
                "vagrant-libvirt", "the Vagrant plugin is not installed", "apt-get install vagrant-libvirt"
            )
        missing = [t for t in ("libvirtd", "virsh", "qemu-system-x86_64") if shutil.which(t) is None]
        if missing:
            raise ToolMissing(
                "libvirt",
                f"missing {', '.join(missing)}",
                "apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients "
                "qemu-system-x86 dnsmasq-base",
            )
