"""The master runs etcd and the control plane as systemd services, and no container engine at all."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from testinfra.host import Host

from provisioner import layout
from provisioner.verify import certs
from provisioner.verify.hosts.helpers import (
    assert_listening,
    assert_service,
    https_get,
    node_name,
    renew_before,
    running_programs,
    served_certificate_pem,
)

testinfra_hosts = ["ansible://masters"]

# The master's units (pod-network is checked on every node by test_common) and the ports each listens on.
CONTROL_PLANE = [u for u in layout.units_for("master") if "worker" not in u.roles]
# Nothing that runs containers belongs on the master: the seed promises a master without a container engine,
# so none of the worker's binaries may be there.
FORBIDDEN = [a.name for a in layout.files_for("worker") if a.kind == "bin" and "master" not in a.roles]
PROGRAM_DIRS = [layout.DIRS.bin, "/usr/local/sbin", "/usr/bin", "/usr/sbin", layout.DIRS.cni_bin]
PKI = layout.DIRS.pki
KUBE = layout.DIRS.kube


@pytest.mark.parametrize("unit", [u.name for u in CONTROL_PLANE])
def test_service(host: Host, unit: str) -> None:
    """systemd unit {unit} is active and enabled"""
    assert_service(host, unit)


@pytest.mark.parametrize("unit", [u.name for u in CONTROL_PLANE if u.ports])
def test_listening(host: Host, unit: str) -> None:
    """{unit} listens on its TCP ports"""
    assert_listening(host, unit)


def test_etcd_runs_unprivileged(host: Host) -> None:
    """etcd runs as its own user, which owns the data dir and nothing else (its keys are root's, 0600)"""
    user = layout.SYSTEM_USERS[0]
    owner = host.check_output("stat -c %U /proc/$(systemctl show --property=MainPID --value etcd)")
    assert owner == user, f"etcd runs as {owner}, not {user}"
    data = host.file(layout.DIRS.etcd_data)
    assert (data.user, data.group, data.mode) == (user, user, 0o700), (
        f"{data.path} is {data.user}:{data.group} {data.mode:o}"
    )
    key = host.file(f"{PKI}/etcd-server.key")
    assert (key.user, key.mode) == ("root", 0o600), f"{key.path} is {key.user} {key.mode:o}"


def test_etcd_healthy(host: Host) -> None:
    """etcd answers `etcdctl endpoint health` over TLS with the apiserver's client certificate"""
    # Generous timeouts and three tries: an emulated master can take seconds to commit one proposal.
    for _ in range(3):
        cmd = host.run(f"{layout.ETCDCTL} --dial-timeout=20s --command-timeout=30s endpoint health")
        if cmd.rc == 0 and "is healthy" in cmd.stdout + cmd.stderr:
            return
    # etcdctl's own verdict, not its retry warnings (JSON log lines).
    verdict = [line for line in (cmd.stdout + cmd.stderr).splitlines() if not line.startswith("{")]
    raise AssertionError(" ".join(verdict) or f"etcdctl exit code {cmd.rc}")


def test_apiserver_healthy(host: Host) -> None:
    """kube-apiserver /readyz answers ok on the master (through its local admin kubeconfig)"""
    # Three tries: on a busy emulated master one TLS handshake can exceed kubectl's fixed 10 s limit.
    for _ in range(3):
        cmd = host.run(f"kubectl --kubeconfig={layout.ADMIN_CONF} --request-timeout=30s get --raw=/readyz")
        if cmd.rc == 0 and cmd.stdout.strip() == "ok":
            return
    raise AssertionError((cmd.stdout + cmd.stderr).strip())


@pytest.mark.parametrize(
    "unit, port", [(u, layout.PORTS[layout.unit(u).ports[0]]) for u in ("kube-controller-manager", "kube-scheduler")]
)
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


@pytest.mark.parametrize("name", ["apiserver", "etcd-server", "etcd-peer"])
def test_served_certificate(host: Host, facts: dict[str, Any], name: str) -> None:
    """the {name} certificate served on its port has the expected names and more than spec.pki.renewBefore left"""
    # Where (hostchecks.served): the apiserver on the node address; etcd on loopback when it is a lone
    # member, on the node address when it is one of several.
    where = facts["served"][node_name(host)][name]
    address, port = where["address"], where["port"]
    found = certs.read_pem(served_certificate_pem(host, address, port))
    assert found, f"{address}:{port} presented no certificate"
    served = found[0]
    wanted = facts["certs"][where["cert"]]
    missing = certs.missing_names(served, wanted["dns"], wanted["ips"])
    assert not missing, f"{name} on {address}:{port} lacks subject alternative names {missing}"
    problems = certs.validity_problems(
        f"{name} on {address}:{port}", served, datetime.datetime.now(datetime.UTC), renew_before(facts)
    )
    assert not problems, "; ".join(problems)
