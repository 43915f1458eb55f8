"""What goes into the lab box: Debian packages, files written into the image, and how it boots.

Everything that changes the image is data here, so that hashing this module's recipe gives the cache key:
edit a package or a file below and the next `box build` rebuilds; leave it and the cached box is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

# Bump when the build steps (not the data below) change in a way that changes the image.
BUILD_FORMAT = 1

BOX_NAME = "provisioner/debian12"

PACKAGES = (
    # boot and service management
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
    # access: Ansible needs SSH and Python; sudo for users who log in as `vagrant`
    "openssh-server",
    "python3",
    "sudo",
    "ca-certificates",
    # what kubelet, kube-proxy and containerd call on a node
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "socat",
    "ethtool",
    "procps",
    "iputils-ping",
    # the workers' load balancer in front of the apiservers when there are several masters (kube-apiserver-lb)
    "haproxy",
)

# Direct kernel boot: no bootloader in the image. `net.ifnames=0` makes the NIC names predictable by order
# (eth0: Vagrant's management network, eth1: the cluster network), which the identity script relies on.
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.firstboot=off"

# The node's identity arrives on the kernel command line (set per VM by the top-level Vagrantfile), so one
# image serves every node: cluster address, authorized SSH key (base64, no spaces) and hostname.
IDENTITY_SCRIPT = r"""#!/bin/sh
# Applies the identity the hypervisor passes on the kernel command line, and makes the SSH host key.
# Runs on every boot before networkd and sshd; each step is a no-op when already done.
set -eu
address=""
key=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        provisioner.address=*) address="${arg#*=}" ;;
        provisioner.ssh_key=*) key="${arg#*=}" ;;
    esac
done
if [ -n "$address" ]; then
    mkdir -p /run/systemd/network
    printf '[Match]\nName=eth1\n\n[Network]\nAddress=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
        "$address" > /run/systemd/network/10-cluster.network
fi
# Debian generates five host key types at install (removed from the image); generating only ed25519 saves
# most of the ~16 s that key generation costs under emulation.
if [ ! -e /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
fi
if [ -n "$key" ]; then
    for user in root vagrant; do
        home=$(getent passwd "$user" | cut -d: -f6)
        install -d -m 700 -o "$user" -g "$user" "$home/.ssh"
        echo "$key" | base64 -d > "$home/.ssh/authorized_keys"
        chown "$user:$user" "$home/.ssh/authorized_keys"
        chmod 600 "$home/.ssh/authorized_keys"
    done
fi
"""

IDENTITY_UNIT = """[Unit]
Description=Node identity from the kernel command line (provisioner)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target systemd-networkd.service ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/provisioner-identity

[Install]
WantedBy=sysinit.target
"""

SSHD_CONFIG = """# provisioner lab box: key-only logins, one host key type, no reverse DNS (no resolver in the lab).
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
GSSAPIAuthentication no
"""

# Any NIC without a more specific .network file (the management one) takes DHCP, which Vagrant needs to
# learn the VM's address. The cluster NIC gets 10-cluster.network from the identity script.
DHCP_NETWORK = """[Match]
Name=eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
ClientIdentifier=mac
"""

FILES: dict[str, tuple[str, int]] = {
    "/usr/local/sbin/provisioner-identity": (IDENTITY_SCRIPT, 0o755),
    "/etc/systemd/system/provisioner-identity.service": (IDENTITY_UNIT, 0o644),
    "/etc/ssh/sshd_config.d/10-provisioner.conf": (SSHD_CONFIG, 0o644),
    "/etc/systemd/network/99-dhcp.network": (DHCP_NETWORK, 0o644),
    "/etc/sudoers.d/vagrant": ("vagrant ALL=(ALL) NOPASSWD: ALL\n", 0o440),
    "/etc/fstab": ("/dev/vda / ext4 rw,errors=remount-ro 0 1\n", 0o644),
    "/etc/hosts": ("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n", 0o644),
    # No resolver exists in the lab; an empty file keeps kubelet's --resolv-conf default valid.
    "/etc/resolv.conf": ("# no resolver in the isolated lab\n", 0o644),
}

# Run inside the image (chroot) after the files are written.
CHROOT_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "vagrant"),
    ("passwd", "--lock", "root"),
    ("passwd", "--lock", "vagrant"),
    ("systemctl", "enable", "systemd-networkd.service", "provisioner-identity.service", "ssh.service"),
    # It would prompt on the console for a locale and time zone on first boot and stall it.
    ("systemctl", "mask", "systemd-firstboot.service"),
    # Debian's own haproxy service (its sample configuration listens nowhere) stays off: the workers run the
    # playbooks' kube-apiserver-lb unit with its own configuration, and only when there are several masters.
    ("systemctl", "disable", "haproxy.service"),
)

# Removed last: per-machine identity (each clone makes its own) and download caches.
REMOVE_GLOBS = (
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "etc/hostname",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*_Packages",
    "var/log/*.log",
)


@dataclass(frozen=True)
class Recipe:
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = PACKAGES
    files: dict[str, tuple[str, int]] = field(default_factory=lambda: dict(FILES))
    chroot_commands: tuple[tuple[str, ...], ...] = CHROOT_COMMANDS
    remove_globs: tuple[str, ...] = REMOVE_GLOBS
    kernel_cmdline: str = KERNEL_CMDLINE
    disk_gib: int = 8
    build_format: int = BUILD_FORMAT

    def digest(self) -> str:
        """Cache key: the recipe's content. The mirror is left out: it changes where, not what."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


RECIPE = Recipe()
