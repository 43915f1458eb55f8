"""Workers run containerd, kubelet and kube-proxy as systemd services, with the images pods need."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from testinfra.host import Host

from provisioner.verify import certs
from provisioner.verify.hosts.helpers import https_get, listening_ports, node_name

testinfra_hosts = ["ansible://workers"]

WORKER_SERVICES = ["containerd", "kubelet", "kube-proxy"]
# kubelet: 10250 API; kube-proxy: 10256 health. (kubelet's 10248 healthz is on loopback.)
PORTS = {"kubelet": [10250, 10248], "kube-proxy": [10256]}
HEALTH = {"kubelet": "http://127.0.0.1:10248/healthz", "kube-proxy": "http://127.0.0.1:10256/healthz"}


@pytest.mark.parametrize("unit", WORKER_SERVICES)
def test_service(host: Host, unit: str) -> None:
    """systemd unit {unit} is active and enabled"""
    service = host.service(unit)
    assert service.is_running, f"{unit} is not active"
    assert service.is_enabled, f"{unit} is not enabled at boot"


def test_containerd_answers(host: Host) -> None:
    """containerd answers on its socket (`ctr version` reports a server)"""
    cmd = host.run("ctr version")
    assert cmd.rc == 0 and "Server:" in cmd.stdout, (cmd.stdout + cmd.stderr).strip()


@pytest.mark.parametrize("unit", sorted(PORTS))
def test_listening(host: Host, unit: str) -> None:
    """{unit} listens on its TCP ports"""
    missing = sorted(set(PORTS[unit]) - listening_ports(host))
    assert not missing, f"{unit}: nothing listens on port(s) {missing}"


@pytest.mark.parametrize("unit", sorted(HEALTH))
def test_healthy(host: Host, unit: str) -> None:
    """{unit} /healthz answers on the node"""
    status, body = https_get(host, HEALTH[unit])
    assert status == 200, f"{unit} {HEALTH[unit]}: {status} {body}"


@pytest.mark.parametrize("image", ["pause", "agnhost"])
def test_image_present(host: Host, facts: dict[str, Any], image: str) -> None:
    """the {image} image is imported into containerd's k8s.io namespace (no registry to pull from)"""
    wanted = facts["images"][image]
    names = host.check_output("ctr --namespace k8s.io images list --quiet").split()
    assert wanted in names, f"{wanted} not among containerd's images {names}"


def test_served_certificate(host: Host, facts: dict[str, Any]) -> None:
    """the kubelet's serving certificate on port 10250 names the node and has 30+ days left"""
    name = node_name(host)
    address = facts["nodes"][name]["address"]
    served = certs.served_certificate(address, 10250)
    wanted = facts["certs"][f"kubelet-server-{name}"]
    missing = certs.missing_names(served, wanted["dns"], wanted["ips"])
    assert not missing, f"kubelet on {address}:10250 lacks subject alternative names {missing}"
    problems = certs.validity_problems(f"kubelet on {address}", served, datetime.datetime.now(datetime.UTC))
    assert not problems, "; ".join(problems)
