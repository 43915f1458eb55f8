"""Workers run containerd, kubelet and kube-proxy as systemd services, with the images pods need."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from testinfra.host import Host

from provisioner import layout
from provisioner.verify import certs, probe
from provisioner.verify.hosts.helpers import assert_listening, assert_service, https_get, node_name, renew_before

testinfra_hosts = ["ansible://workers"]

# The worker's units (pod-network is checked on every node by test_common).
WORKER_SERVICES = [u for u in layout.units_for("worker") if "master" not in u.roles]
KUBELET_PORT = layout.PORTS["kubelet"]
# The health endpoints, on loopback.
HEALTH = {
    "kubelet": f"http://127.0.0.1:{layout.PORTS['kubelet_healthz']}/healthz",
    "kube-proxy": f"http://127.0.0.1:{layout.PORTS['kube_proxy_healthz']}/healthz",
}
# The apiservers through the load balancer (clusters with several masters).
LB_URL = f"https://127.0.0.1:{layout.PORTS['apiserver_lb']}/readyz"


def _installed(host: Host, facts: dict[str, Any], unit: str) -> None:
    """Skip a unit this cluster does not put on the node (the load balancer with one master)."""
    if unit not in facts["units"][node_name(host)]:
        pytest.skip(f"{unit} runs only on clusters with several masters")


@pytest.mark.parametrize("unit", [u.name for u in WORKER_SERVICES])
def test_service(host: Host, facts: dict[str, Any], unit: str) -> None:
    """systemd unit {unit} is active and enabled"""
    _installed(host, facts, unit)
    assert_service(host, unit)


def test_containerd_answers(host: Host) -> None:
    """containerd answers on its socket (`ctr version` reports a server)"""
    cmd = host.run("ctr version")
    assert cmd.rc == 0 and "Server:" in cmd.stdout, (cmd.stdout + cmd.stderr).strip()


@pytest.mark.parametrize("unit", sorted(u.name for u in WORKER_SERVICES if u.ports))
def test_listening(host: Host, facts: dict[str, Any], unit: str) -> None:
    """{unit} listens on its TCP ports"""
    _installed(host, facts, unit)
    assert_listening(host, unit)


def test_apiserver_through_the_load_balancer(host: Host, facts: dict[str, Any]) -> None:
    """an apiserver answers on the worker's loopback through the load balancer (401: the request had no credentials)"""
    _installed(host, facts, layout.APISERVER_LB_UNIT)
    cmd = host.run(probe.node_command(probe.get_args(LB_URL, 15, verify=False)))
    # the probe reports an error status as a failure: "HTTP 401: <body>"
    answer = probe.failure(cmd.stderr).text if cmd.rc else f"HTTP {probe.read_answer(cmd.stdout)[0]}"
    assert answer.startswith("HTTP 401"), f"{LB_URL}: {answer}"


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
    """the kubelet's serving certificate on its port names the node and has more than spec.pki.renewBefore left"""
    name = node_name(host)
    address = facts["nodes"][name]["address"]
    served = certs.served_certificate(address, KUBELET_PORT)
    wanted = facts["certs"][f"kubelet-server-{name}"]
    missing = certs.missing_names(served, wanted["dns"], wanted["ips"])
    assert not missing, f"kubelet on {address}:{KUBELET_PORT} lacks subject alternative names {missing}"
    problems = certs.validity_problems(
        f"kubelet on {address}", served, datetime.datetime.now(datetime.UTC), renew_before(facts)
    )
    assert not problems, "; ".join(problems)
