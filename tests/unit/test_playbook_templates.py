"""The roles' configuration templates, rendered for the default lab with its real group vars.

What a user would check in the files on the nodes: the sandbox image containerd pins is the one the
artifact set imports, each worker's pod network uses its own subnet and routes to the others, the
kubelet registers with its private address and only accepts authenticated callers.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import FilterModule as AnsibleCoreFilters
from ansible.plugins.filter.mathstuff import FilterModule as AnsibleMathFilters

from provisioner import inventory, paths, spec
from provisioner.artifacts import image_names
from provisioner.hosts import HostConnection
from provisioner.state import State

ROLES = paths.REPO_ROOT / "playbooks" / "roles"


@pytest.fixture(scope="module")
def cluster() -> spec.Cluster:
    return spec.load(paths.default_spec())


def _context(cluster: spec.Cluster, host: str, tmp: Path) -> dict[str, Any]:
    hosts = [
        HostConnection(n.name, n.role, str(n.address), str(n.address), 22, "root", Path("/k"))
        for n in cluster.spec.nodes
    ]
    inv = inventory.inventory(cluster, hosts)
    groups = {g: list(v["hosts"]) for g, v in inv["all"]["children"]["k8s_cluster"]["children"].items()}
    ctx: dict[str, Any] = dict(inventory.group_vars(cluster, State(tmp), tmp / "artifacts"))
    ctx.update(inventory.host_vars(cluster, next(h for h in hosts if h.name == host)))
    ctx.update(groups=groups, inventory_hostname=host, ansible_managed="Ansible managed")
    for defaults in sorted(ROLES.glob("*/defaults/main.yml")):
        ctx.update(yaml.safe_load(defaults.read_text()) or {})
    env = _with_ansible_filters(jinja2.Environment(undefined=jinja2.StrictUndefined))
    # role defaults refer to group vars and to each other: resolve the plain string ones
    for _ in range(3):
        for key, value in list(ctx.items()):
            if isinstance(value, str) and "{{" in value:
                ctx[key] = env.from_string(value).render(ctx)
    return ctx


def _with_ansible_filters(env: jinja2.Environment) -> jinja2.Environment:
    """The filters Ansible adds to Jinja (regex_replace, zip, ...), as the playbooks see them."""
    # Jinja's own filters (default, ...) stay Jinja's: Ansible's versions expect its templar.
    for plugins in (AnsibleCoreFilters(), AnsibleMathFilters()):
        env.filters.update({k: f for k, f in plugins.filters().items() if k not in env.filters})
    return env


def render(cluster: spec.Cluster, role: str, template: str, host: str, tmp: Path, **extra: Any) -> str:
    env = _with_ansible_filters(
        jinja2.Environment(
            loader=jinja2.FileSystemLoader(ROLES / role / "templates"),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
    )
    return env.get_template(template).render({**_context(cluster, host, tmp), **extra})


def test_containerd_pins_the_imported_pause_image_and_systemd_cgroups(cluster: spec.Cluster, tmp_path: Path) -> None:
    config = tomllib.loads(render(cluster, "containerd", "config.toml.j2", "worker-1", tmp_path))
    assert config["version"] == 3
    pinned = config["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
    assert pinned == image_names(cluster.spec.kubernetes.version)["pause"]
    runc = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True


@pytest.mark.parametrize(("host", "subnet"), [("worker-1", "10.244.11.0/24"), ("worker-2", "10.244.12.0/24")])
def test_each_worker_hands_out_pod_addresses_from_its_own_subnet(
    cluster: spec.Cluster, tmp_path: Path, host: str, subnet: str
) -> None:
    conflist = json.loads(render(cluster, "containerd", "10-bridge.conflist.j2", host, tmp_path))
    bridge = conflist["plugins"][0]
    assert bridge["type"] == "bridge"
    assert bridge["ipam"]["ranges"] == [[{"subnet": subnet}]]


@pytest.mark.parametrize(
    ("host", "routes"),
    [
        ("master", {"10.244.11.0/24 via 192.168.56.11", "10.244.12.0/24 via 192.168.56.12"}),
        ("worker-1", {"10.244.10.0/24 via 192.168.56.10", "10.244.12.0/24 via 192.168.56.12"}),
        ("worker-2", {"10.244.10.0/24 via 192.168.56.10", "10.244.11.0/24 via 192.168.56.11"}),
    ],
)
def test_every_node_routes_to_the_other_nodes_pod_subnets(
    cluster: spec.Cluster, tmp_path: Path, host: str, routes: set[str]
) -> None:
    unit = render(cluster, "prep", "pod-network.service.j2", host, tmp_path)
    found = {line.split("route replace ", 1)[1] for line in unit.splitlines() if line.startswith("StandardInputText=")}
    assert routes <= found
    own = cluster.pod_cidrs[host]
    assert not any(route.startswith(f"{own} ") for route in found)
    # every other possible node of the /24 node subnet is routed already, so adding one changes nothing here
    assert len(found) == 254 - 1
    assert "10.244.13.0/24 via 192.168.56.13" in found
    assert "ExecStart=/usr/sbin/ip -force -batch -" in unit


def test_kubelet_registers_with_its_private_address_and_rejects_anonymous_callers(
    cluster: spec.Cluster, tmp_path: Path
) -> None:
    unit = render(cluster, "kubelet", "kubelet.service.j2", "worker-2", tmp_path)
    assert "--node-ip=192.168.56.12" in unit
    assert "--hostname-override=worker-2" in unit
    config = yaml.safe_load(render(cluster, "kubelet", "config.yaml.j2", "worker-2", tmp_path))
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["webhook"]["enabled"] is True
    assert config["authorization"]["mode"] == "Webhook"
    assert config["cgroupDriver"] == "systemd"
    assert config["clusterDNS"] == ["10.96.0.10"]
    assert config["readOnlyPort"] == 0


def test_apiserver_flags_lock_down_access(cluster: spec.Cluster, tmp_path: Path) -> None:
    unit = render(cluster, "control_plane", "kube-apiserver.service.j2", "master", tmp_path)
    for flag in (
        "--anonymous-auth=false",
        "--authorization-mode=Node,RBAC",
        "--encryption-provider-config=/etc/kubernetes/encryption-config.yaml",
        "--service-cluster-ip-range=10.96.0.0/12",
        "--kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt",
    ):
        assert flag in unit
    for component in ("kube-controller-manager", "kube-scheduler"):
        other = render(cluster, "control_plane", f"{component}.service.j2", "master", tmp_path)
        assert "--bind-address=127.0.0.1" in other


def test_etcd_serves_clients_on_loopback_only_with_client_certificates(cluster: spec.Cluster, tmp_path: Path) -> None:
    unit = render(cluster, "etcd", "etcd.service.j2", "master", tmp_path)
    assert "--listen-client-urls=https://127.0.0.1:2379 " in unit
    assert "--client-cert-auth=true" in unit
    assert "--peer-client-cert-auth=true" in unit


def test_coredns_serves_the_cluster_dns_ip_and_forwards_only_when_upstreams_exist(
    cluster: spec.Cluster, tmp_path: Path
) -> None:
    isolated = list(
        yaml.safe_load_all(render(cluster, "coredns", "coredns.yaml.j2", "master", tmp_path, coredns_forward_to=[]))
    )
    service = next(d for d in isolated if d["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    corefile = next(d for d in isolated if d["kind"] == "ConfigMap")["data"]["Corefile"]
    assert "forward" not in corefile
    online = list(
        yaml.safe_load_all(
            render(cluster, "coredns", "coredns.yaml.j2", "master", tmp_path, coredns_forward_to=["9.9.9.9"])
        )
    )
    assert "forward . 9.9.9.9" in next(d for d in online if d["kind"] == "ConfigMap")["data"]["Corefile"]
    deployment = next(d for d in online if d["kind"] == "Deployment")
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        == image_names(cluster.spec.kubernetes.version)["coredns"]
    )
