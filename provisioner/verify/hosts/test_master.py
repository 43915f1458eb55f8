"""The master runs etcd and the control plane as systemd services, and no container engine at all."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from testinfra.host import Host

from provisioner.verify import certs
from provisioner.verify.hosts.helpers import (
    https_get,
    listening_ports,
    node_name,
    running_programs,
    served_certificate_pem,
)

testinfra_hosts = ["ansible://masters"]

CONTROL_PLANE = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
# Ports each component listens on: etcd client and peer, the API, the two components' secure ports.
PORTS = {"etcd": [2379, 2380], "kube-apiserver": [6443], "kube-controller-manager": [10257], "kube-scheduler": [10259]}
# Nothing that runs containers belongs on the master: the seed promises a master without a container engine.
FORBIDDEN = ["containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl", "kubelet", "kube-proxy"]
PROGRAM_DIRS = ["/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/opt/cni/bin"]
PKI = "/etc/kubernetes/pki"
ETCDCTL = (
    f"etcdctl --endpoints=https://127.0.0.1:2379 --cacert={PKI}/ca.crt "
    f"--cert={PKI}/apiserver-etcd-client.crt --key={PKI}/apiserver-etcd-client.key"
)


@pytest.mark.parametrize("unit", CONTROL_PLANE)
def test_service(host: Host, unit: str) -> None:
    """systemd unit {unit} is active and enabled"""
    service = host.service(unit)
    assert service.is_running, f"{unit} is not active"
    assert service.is_enabled, f"{unit} is not enabled at boot"


@pytest.mark.parametrize("unit", CONTROL_PLANE)
def test_listening(host: Host, unit: str) -> None:
    """{unit} listens on its TCP ports"""
    missing = sorted(set(PORTS[unit]) - listening_ports(host))
    assert not missing, f"{unit}: nothing listens on port(s) {missing}"


def test_etcd_healthy(host: Host) -> None:
    """etcd answers `etcdctl endpoint health` over TLS with the apiserver's client certificate"""
    # Generous timeouts and three tries: an emulated master can take seconds to commit one proposal.
    for _ in range(3):
        cmd = host.run(f"{ETCDCTL} --dial-timeout=20s --command-timeout=30s endpoint health")
        if cmd.rc == 0 and "is healthy" in cmd.stdout + cmd.stderr:
            return
    # etcdctl's own verdict, not its retry warnings (JSON log lines).
    verdict = [line for line in (cmd.stdout + cmd.stderr).splitlines() if not line.startswith("{")]
    raise AssertionError(" ".join(verdict) or f"etcdctl exit code {cmd.rc}")


def test_apiserver_healthy(host: Host) -> None:
    """kube-apiserver /readyz answers ok on the master (through its local admin kubeconfig)"""
    # Three tries: on a busy emulated master one TLS handshake can exceed kubectl's fixed 10 s limit.
    for _ in range(3):
        cmd = host.run("kubectl --kubeconfig=/etc/kubernetes/admin.kubeconfig --request-timeout=30s get --raw=/readyz")
        if cmd.rc == 0 and cmd.stdout.strip() == "ok":
            return
    raise AssertionError((cmd.stdout + cmd.stderr).strip())


@pytest.mark.parametrize("unit, port", [("kube-controller-manager", 10257), ("kube-scheduler", 10259)])
def test_component_healthy(host: Host, unit: str, port: int) -> None:
    """{unit} /healthz on port {port} answers ok"""
    status, body = https_get(host, f"https://127.0.0.1:{port}/healthz")
    assert (status, body) == (200, "ok"), f"{unit} /healthz: {status} {body}"


@pytest.fixture(scope="module")
def programs(host: Host) -> tuple[list[str], set[str]]:
    """Files in the program folders and names of running processes, read once: two SSH round trips, not 35."""
    out = host.check_output(f"find {' '.join(PROGRAM_DIRS)} -maxdepth 1 2>/dev/null || true")
    return [line for line in out.splitlines() if line], running_programs(host)


@pytest.mark.parametrize("program", FORBIDDEN)
def test_no_container_engine(programs: tuple[list[str], set[str]], program: str) -> None:
    """{program} is neither installed nor running on the master"""
    files, running = programs
    installed = [path for path in files if path.rsplit("/", 1)[-1] == program]
    assert not installed, f"{program} is installed: {installed}"
    # /proc/PID/comm holds at most 15 characters.
    assert program[:15] not in running, f"{program} is running"


# Where each certificate is served: etcd's client port is on loopback only, the others on the node address.
SERVED = [("apiserver", "node-address", 6443), ("etcd-server", "127.0.0.1", 2379), ("etcd-peer", "node-address", 2380)]


@pytest.mark.parametrize("name, where, port", SERVED)
def test_served_certificate(host: Host, facts: dict[str, Any], name: str, where: str, port: int) -> None:
    """the {name} certificate served on port {port} has the expected names and 30+ days left"""
    address = facts["nodes"][node_name(host)]["address"] if where == "node-address" else where
    found = certs.read_pem(served_certificate_pem(host, address, port))
    assert found, f"{address}:{port} presented no certificate"
    served = found[0]
    wanted = facts["certs"][name]
    missing = certs.missing_names(served, wanted["dns"], wanted["ips"])
    assert not missing, f"{name} on {address}:{port} lacks subject alternative names {missing}"
    problems = certs.validity_problems(f"{name} on {address}:{port}", served, datetime.datetime.now(datetime.UTC))
    assert not problems, "; ".join(problems)
