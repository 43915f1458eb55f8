"""Where everything lives on a node and who gets what: the one table of paths, ports, files and units.

Python owns it (compare kubeadm's constants.go and k0s's constant.go). `inventory.group_vars` emits it as
the `layout` variable; the role defaults, templates, `reset`'s lists and `verify`'s probes all read it
from there or from here, so a path, a port or a binary is named once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

ROLES = ("master", "worker")

# The cluster's DNS domain: kubelets' clusterDomain, CoreDNS's zone, the apiserver certificate's names.
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Dirs:
    """Directories on a node."""

    bin: str = "/usr/local/bin"
    units: str = "/etc/systemd/system"
    kube: str = "/etc/kubernetes"  # kubeconfigs, component configuration, the encryption config
    pki: str = "/etc/kubernetes/pki"
    addons: str = "/etc/kubernetes/addons"
    etcd_data: str = "/var/lib/etcd"
    kubelet: str = "/var/lib/kubelet"
    kube_proxy: str = "/var/lib/kube-proxy"
    containerd_config: str = "/etc/containerd"
    containerd_state: str = "/var/lib/containerd"
    containerd_run: str = "/run/containerd"
    cni_bin: str = "/opt/cni/bin"
    cni_root: str = "/opt/cni"
    cni_config_root: str = "/etc/cni"
    cni_config: str = "/etc/cni/net.d"
    cni_state: str = "/var/lib/cni"
    logs: str = "/var/log/kubernetes"
    audit_log: str = "/var/log/kubernetes/audit"  # the apiserver's audit log
    provisioner: str = "/var/lib/provisioner"  # image archives waiting for import, the checksum cache
    images: str = "/var/lib/provisioner/images"


DIRS = Dirs()

# The master's admin kubeconfigs, under kubeadm's names (the CIS checks look for these): the daily one and
# the break-glass one (see ADMINS_GROUP).
ADMIN_CONF = f"{DIRS.kube}/admin.conf"
SUPER_ADMIN_CONF = f"{DIRS.kube}/super-admin.conf"
# How the apiserver encrypts Secrets in etcd; it re-reads the file by itself (its automatic reload), so
# `provisioner secrets rotate-key` changes keys by replacing this file (provisioner/encryption.py).
ENCRYPTION_CONFIG = f"{DIRS.kube}/encryption-config.yaml"
# How a member that joins a running etcd cluster (a replaced master) first starts: the cluster as its other
# members report it, state "existing". Read by the unit only while the data dir is empty.
ETCD_JOIN_ENV = f"{DIRS.kube}/etcd-join.env"
# The kubelet renews its own client certificate (rotateCertificates) into this directory, and from then on
# uses the newest one there instead of its kubeconfig's; a new kubeconfig from the provisioner clears it.
KUBELET_CERT_DIR = f"{DIRS.kubelet}/pki"
KUBELET_ROTATED_CLIENT = f"{KUBELET_CERT_DIR}/kubelet-client-current.pem"

# System users the playbooks create; reset removes them. etcd runs as its own user, owning its data dir
# (CIS 1.1.12); its keys stay root's and reach it through systemd's credentials.
ETCD_USER = "etcd"
SYSTEM_USERS = (ETCD_USER,)

# Single configuration files outside the directories above.
CONTAINERD_SOCKET = f"{DIRS.containerd_run}/containerd.sock"
CRICTL_CONFIG = "/etc/crictl.yaml"
SYSCTL_CONFIG = "/etc/sysctl.d/90-kubernetes.conf"
MODULES_CONFIG = "/etc/modules-load.d/kubernetes.conf"

# The group the daily admin credential belongs to, bound to cluster-admin through RBAC (the addons' rbac
# manifest); only the break-glass super-admin credential is in system:masters, which RBAC cannot restrict.
ADMINS_GROUP = "provisioner:cluster-admins"
# The apiserver's identity towards kubelets, bound to system:kubelet-api-admin (CIS 5.1.7: not system:masters).
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"

# The apiserver load balancers' identity for their health checks (the workers' haproxy and the admin
# machine's forwarder): it asks each apiserver for /readyz over TLS, which anonymous requests may not, and
# may do nothing else (Kubernetes' own system:public-info-viewer role lets every signed-in user read /readyz).
APISERVER_HEALTH_CHECK = "provisioner:apiserver-health-check"

# The common name of every etcd peer certificate when etcd has several members, and the only one a member
# accepts from a peer (--peer-cert-allowed-cn): the apiserver's etcd client certificate, signed by the same
# CA, cannot pose as a member.
ETCD_PEER_CN = "etcd-peer"

# etcdctl's TLS flags as the apiserver talks to etcd: etcd's own CA, the apiserver's etcd client certificate.
ETCDCTL_TLS = (
    f"--cacert={DIRS.pki}/etcd-ca.crt --cert={DIRS.pki}/apiserver-etcd-client.crt "
    f"--key={DIRS.pki}/apiserver-etcd-client.key"
)

# Every TCP port a component listens on.
PORTS = {
    "apiserver": 6443,
    # On a worker of a cluster with several masters: the load balancer in front of every master's apiserver,
    # on loopback (Kubespray's localhost:6443 on nodes that run no apiserver of their own).
    "apiserver_lb": 6443,
    "etcd_client": 2379,
    "etcd_peer": 2380,
    "etcd_metrics": 2381,
    "controller_manager": 10257,
    "scheduler": 10259,
    "kubelet": 10250,
    "kubelet_healthz": 10248,
    "kube_proxy_healthz": 10256,
    "kube_proxy_metrics": 10249,
}

# etcdctl on the master as the apiserver reaches etcd (verify's probes, the key rotation's checks).
ETCDCTL = f"etcdctl --endpoints=https://127.0.0.1:{PORTS['etcd_client']} {ETCDCTL_TLS}"

# `provisioner restore` (provisioner/backup.py) on a master: etcdutl writes the restored member beside the data
# dir, which takes its place only once complete; the data dir it replaces is kept under a name of its own
# (ETCD_DATA_ASIDE + the restore's UTC time); and until the whole restore is done, a marker in the restored
# data dir names the snapshot it came from (etcd logs "found invalid file under data directory" meanwhile).
ETCD_DATA_RESTORING = f"{DIRS.etcd_data}.restoring"
ETCD_DATA_ASIDE = f"{DIRS.etcd_data}.before-restore-"
ETCD_RESTORE_MARKER = "provisioner-restored-from"
# Root-only temporary directories on a master for a snapshot on its way to or from the admin machine.
SNAPSHOT_TMP = "/var/tmp"

# Kernel modules and settings every node needs: overlay for containerd's snapshots, br_netfilter and the
# bridge settings so bridged pod traffic meets iptables, forwarding for the pod routes between nodes.
KERNEL_MODULES = ("overlay", "br_netfilter")
SYSCTLS = {"net.ipv4.ip_forward": 1, "net.bridge.bridge-nf-call-iptables": 1, "net.bridge.bridge-nf-call-ip6tables": 1}


@dataclass(frozen=True)
class Artifact:
    """One file of the artifact set: its path in the set, the pinned component it comes from, who gets it."""

    path: str  # bin/NAME, cni/NAME or images/NAME.tar
    component: str  # attribute of versions.ComponentSet that pins it
    roles: tuple[str, ...]  # node roles that install it; empty: used by the build only

    @property
    def name(self) -> str:
        return self.path.split("/", 1)[1].removesuffix(".tar")

    @property
    def kind(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def target(self) -> str:
        """Where a node keeps it."""
        directory = {"bin": DIRS.bin, "cni": DIRS.cni_bin, "images": DIRS.images}[self.kind]
        return f"{directory}/{self.path.split('/', 1)[1]}"

    @property
    def mode(self) -> str:
        return "0644" if self.kind == "images" else "0755"


_M, _W = ("master",), ("worker",)
ARTIFACTS = (
    Artifact("bin/kube-apiserver", "kubernetes", _M),
    Artifact("bin/kube-controller-manager", "kubernetes", _M),
    Artifact("bin/kube-scheduler", "kubernetes", _M),
    Artifact("bin/kubelet", "kubernetes", _W),
    Artifact("bin/kube-proxy", "kubernetes", _W),
    # kubectl on the master: CoreDNS is applied from there; the admin machine runs the set's own copy.
    Artifact("bin/kubectl", "kubernetes", _M),
    Artifact("bin/etcd", "etcd", _M),
    Artifact("bin/etcdctl", "etcd", _M),
    # etcd 3.6's offline tool: `snapshot restore` and `snapshot status` (no longer in etcdctl).
    Artifact("bin/etcdutl", "etcd", _M),
    Artifact("bin/containerd", "containerd", _W),
    Artifact("bin/containerd-shim-runc-v2", "containerd", _W),
    Artifact("bin/ctr", "containerd", _W),
    Artifact("bin/runc", "runc", _W),
    Artifact("bin/crictl", "crictl", _W),
    # CoreDNS runs as a pod: its binary goes into the coredns image, not onto a node.
    Artifact("bin/coredns", "coredns", ()),
    Artifact("cni/bridge", "cni_plugins", _W),
    Artifact("cni/host-local", "cni_plugins", _W),
    Artifact("cni/loopback", "cni_plugins", _W),
    Artifact("cni/portmap", "cni_plugins", _W),
    Artifact("images/pause.tar", "pause", _W),
    Artifact("images/agnhost.tar", "agnhost", _W),
    Artifact("images/coredns.tar", "coredns", _W),
)


def artifacts_of(kind: str) -> tuple[Artifact, ...]:
    return tuple(a for a in ARTIFACTS if a.kind == kind)


def binaries_of(component: str) -> tuple[str, ...]:
    """The names of the binaries one pinned component (e.g. "kubernetes") provides."""
    return tuple(a.name for a in artifacts_of("bin") if a.component == component)


def files_for(role: str) -> tuple[Artifact, ...]:
    """The artifact-set files a node of this role installs."""
    return tuple(a for a in ARTIFACTS if role in a.roles)


@dataclass(frozen=True)
class Unit:
    """A systemd unit the playbooks install: on which nodes, the binary it runs, the ports it listens on."""

    name: str
    roles: tuple[str, ...]
    binary: str | None  # bin/NAME of the artifact set; its checksum is written into the unit
    ports: tuple[str, ...] = ()  # keys of PORTS
    ha_only: bool = False  # installed only on a cluster with several masters

    def installed_with(self, masters: int) -> bool:
        """Whether a cluster with this many masters has the unit (on the nodes of its roles)."""
        return masters > 1 or not self.ha_only


# The workers' load balancer in front of the apiservers (haproxy, from Debian's package, not the artifact set).
# With one master the workers talk to that master directly and the unit is not installed (endpoints.py).
APISERVER_LB_UNIT = "kube-apiserver-lb"


# In the order the playbooks start them; reset stops them the other way round (consumers first).
UNITS = (
    Unit("pod-network", ROLES, None),
    Unit("etcd", _M, "bin/etcd", ("etcd_client", "etcd_peer")),
    Unit("kube-apiserver", _M, "bin/kube-apiserver", ("apiserver",)),
    Unit("kube-controller-manager", _M, "bin/kube-controller-manager", ("controller_manager",)),
    Unit("kube-scheduler", _M, "bin/kube-scheduler", ("scheduler",)),
    Unit(APISERVER_LB_UNIT, _W, None, ("apiserver_lb",), ha_only=True),
    Unit("containerd", _W, "bin/containerd"),
    Unit("kubelet", _W, "bin/kubelet", ("kubelet", "kubelet_healthz")),
    Unit("kube-proxy", _W, "bin/kube-proxy", ("kube_proxy_healthz",)),
)


def units_for(role: str) -> tuple[Unit, ...]:
    """Every unit a node of this role may run."""
    return tuple(u for u in UNITS if role in u.roles)


def installed_units(role: str, masters: int) -> tuple[Unit, ...]:
    """The units a node of this role runs in a cluster with this many masters."""
    return tuple(u for u in units_for(role) if u.installed_with(masters))


def unit(name: str) -> Unit:
    return next(u for u in UNITS if u.name == name)


# Everything the playbooks write outside the installed files and units: `reset` removes it all.
OWNED_PATHS = (
    DIRS.kube,
    DIRS.logs,
    DIRS.containerd_config,
    DIRS.cni_config_root,
    CRICTL_CONFIG,
    SYSCTL_CONFIG,
    MODULES_CONFIG,
    DIRS.cni_root,
    DIRS.etcd_data,
    DIRS.kubelet,
    DIRS.kube_proxy,
    DIRS.containerd_state,
    DIRS.cni_state,
    DIRS.provisioner,
    DIRS.containerd_run,
)


def group_vars() -> dict[str, object]:
    """The `layout` variable every play reads (plain data: dirs, files, ports, units per role)."""
    return {
        "dirs": {k: getattr(DIRS, k) for k in DIRS.__dataclass_fields__},
        "cluster_domain": CLUSTER_DOMAIN,
        "admins_group": ADMINS_GROUP,
        "apiserver_kubelet_client": APISERVER_KUBELET_CLIENT,
        "apiserver_health_check": APISERVER_HEALTH_CHECK,
        "etcd_peer_cn": ETCD_PEER_CN,
        "containerd_socket": CONTAINERD_SOCKET,
        "admin_conf": ADMIN_CONF,
        "super_admin_conf": SUPER_ADMIN_CONF,
        "encryption_config": ENCRYPTION_CONFIG,
        "etcd_join_env": ETCD_JOIN_ENV,
        "kubelet_cert_dir": KUBELET_CERT_DIR,
        "crictl_config": CRICTL_CONFIG,
        "sysctl_config": SYSCTL_CONFIG,
        "modules_config": MODULES_CONFIG,
        "kernel_modules": list(KERNEL_MODULES),
        "sysctls": dict(SYSCTLS),
        "ports": dict(PORTS),
        # [artifact-set path, path on the node, mode] of every file a role installs (the node_files role).
        "files": {role: [[a.path, a.target, a.mode] for a in files_for(role)] for role in ROLES},
        "units": {role: [u.name for u in units_for(role)] for role in ROLES},
        # What a converged node of the role runs whatever the master count (`provisioner plan` checks a host
        # only once it has them: check mode cannot go through a first install).
        "units_always": {role: [u.name for u in units_for(role) if not u.ha_only] for role in ROLES},
        "reset": {
            "units": [u.name for u in reversed(UNITS)],
            "files": sorted({a.target for a in ARTIFACTS if a.roles}),
            "paths": list(OWNED_PATHS),
            # What a restore left beside the data dir: [directory, glob patterns of the entries].
            "set_aside": [
                str(PurePosixPath(DIRS.etcd_data).parent),
                [PurePosixPath(ETCD_DATA_RESTORING).name, PurePosixPath(ETCD_DATA_ASIDE).name + "*"],
            ],
            "users": list(SYSTEM_USERS),
        },
    }
