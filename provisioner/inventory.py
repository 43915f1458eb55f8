"""Derived files: Ansible inventory, group vars and the Vagrant machine list, all from the model.

Nothing here is ever parsed back into the model; these files are outputs only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from provisioner import endpoints, layout, pki
from provisioner.artifacts.layout import image_names
from provisioner.hosts import HostConnection
from provisioner.spec import Cluster, Node, VagrantProvider
from provisioner.state import State
from provisioner.versions import components

GROUPS = {"master": "masters", "worker": "workers"}
# The workers that run the load balancer in front of the apiservers: all of them when there are several
# masters, none with one. site.yml's load balancer play runs on this group.
APISERVER_LB_GROUP = "apiserver_lb"


def machine_list(cluster: Cluster) -> list[dict[str, Any]]:
    """What the top-level Vagrantfile defines: one entry per node."""
    provider = cluster.spec.provider
    assert isinstance(provider, VagrantProvider)
    return [
        {
            "name": n.name,
            "role": n.role,
            "address": str(n.address),
            "cpus": n.cpus,
            "memory": n.memory,
            "box": provider.box,
        }
        for n in cluster.spec.nodes
    ]


# Up to this many possible nodes, every node routes to every possible node's pod subnet up front.
MAX_PREROUTED = 1024


def pod_routes(cluster: Cluster, name: str) -> list[str]:
    """`CIDR via ADDRESS` for the pod subnet of every other node, as `ip route` arguments.

    A node's pod subnet is indexed by its address's offset in the node subnet, so the route to any
    possible node is known in advance. Routing to all of them (a gateway that does not exist yet just
    fails ARP) means a worker added later needs no change on the nodes already running. Node subnets
    too large for that get routes to the nodes in the spec only.
    """
    net = cluster.spec.network
    count = min(
        2 ** (net.pod_subnet_per_node_prefix - net.pod_subnet.prefixlen),
        net.node_subnet.num_addresses - 1,
    )
    own = cluster.pod_cidrs[name]
    if count <= MAX_PREROUTED:
        subnets = itertools.islice(net.pod_subnet.subnets(new_prefix=net.pod_subnet_per_node_prefix), count)
        pairs = [(cidr, net.node_subnet.network_address + i) for i, cidr in enumerate(subnets) if i > 0]
    else:
        pairs = [(cluster.pod_cidrs[n.name], n.address) for n in cluster.spec.nodes if n.address is not None]
    return [f"{cidr} via {address}" for cidr, address in pairs if cidr != own]


def node_vars(cluster: Cluster, node: Node, address: str) -> dict[str, Any]:
    """What the roles know of a node, its connection aside; `address`: on the cluster network."""
    own: dict[str, Any] = {}
    if node.role == "master":
        # The PKI directory's files this master installs as its etcd-server and etcd-peer certificates.
        own["node_etcd_certs"] = pki.etcd_certs(cluster, node)
    return {
        "node_address": address,
        "node_role": node.role,
        "node_pod_cidr": str(cluster.pod_cidrs[node.name]),
        "node_pod_routes": pod_routes(cluster, node.name),
        **own,
    }


def host_vars(cluster: Cluster, host: HostConnection) -> dict[str, Any]:
    return {
        "ansible_host": host.ssh_host,
        "ansible_port": host.ssh_port,
        "ansible_user": host.ssh_user,
        "ansible_ssh_private_key_file": str(host.ssh_key),
        # The roles manage root-owned files and services; a non-root login escalates with sudo.
        "ansible_become": host.ssh_user != "root",
        **node_vars(cluster, cluster.node(host.name), host.address),
    }


def inventory(cluster: Cluster, hosts: list[HostConnection], planned: Sequence[Node] = ()) -> dict[str, Any]:
    """Every host that exists, in spec order. `planned`: nodes of the spec with no machine yet, listed without
    connection details for the groups and counts a run derives from them; a run is limited to the others
    (`provisioner plan`, which must see the cluster as `up` would converge it)."""
    groups: dict[str, dict[str, Any]] = {g: {"hosts": {}} for g in GROUPS.values()}
    by_name = {h.name: h for h in hosts}
    wanted = {*by_name, *(p.name for p in planned)}
    # Spec order, so that masters[0] (the addons play's host) is the master `up` would use.
    listed = [n for n in cluster.spec.nodes if n.name in wanted]
    for node in listed:
        host = by_name.get(node.name)
        groups[GROUPS[node.role]]["hosts"][node.name] = (
            host_vars(cluster, host) if host is not None else node_vars(cluster, node, str(node.address))
        )
    lb = layout.unit(layout.APISERVER_LB_UNIT)
    groups[APISERVER_LB_GROUP] = {
        "hosts": {n.name: {} for n in listed if n.role in lb.roles and lb.installed_with(len(cluster.masters))}
    }
    return {"all": {"children": {"k8s_cluster": {"children": groups}}}}


def group_vars(cluster: Cluster, state: State, artifacts_dir: Path) -> dict[str, Any]:
    """Cluster-wide variables every role reads. Role-specific defaults live in each role."""
    net = cluster.spec.network
    pins = components(cluster.spec.kubernetes.version)
    return {
        "cluster_name": cluster.name,
        "kubernetes_version": pins.kubernetes,
        "etcd_version": pins.etcd,
        "containerd_version": pins.containerd,
        "pause_image": f"registry.k8s.io/pause:{pins.pause}",
        # Names the imported image archives carry (the roles import them and reference them by name).
        "agnhost_image": image_names(pins.kubernetes)["agnhost"],
        "coredns_image": image_names(pins.kubernetes)["coredns"],
        "coredns_version": pins.coredns,
        "node_subnet": str(net.node_subnet),
        "pod_subnet": str(net.pod_subnet),
        "service_subnet": str(net.service_subnet),
        "apiserver_service_ip": str(net.apiserver_service_ip),
        "cluster_dns_ip": str(net.dns_service_ip),
        "kube_proxy_mode": net.proxy_mode,
        "pod_cidrs": {name: str(cidr) for name, cidr in cluster.pod_cidrs.items()},
        "node_addresses": {n.name: str(n.address) for n in cluster.spec.nodes},
        # etcd's members, name, address (loopback for a lone one) and peer URL: the etcd role's cluster, the
        # apiserver's servers. The initial cluster and token are also what `provisioner restore` gives etcdutl.
        "etcd_members": [
            {"name": m.name, "address": m.address, "peer_url": m.peer_url} for m in endpoints.etcd_members(cluster)
        ],
        "etcd_initial_cluster": endpoints.etcd_initial_cluster(endpoints.etcd_members(cluster)),
        "etcd_cluster_token": endpoints.etcd_cluster_token(cluster),
        "artifacts_dir": str(artifacts_dir),
        # Units carry their binary's checksum, so a new binary restarts its service like a new config.
        "artifact_checksums": _checksums(artifacts_dir),
        "pki_dir": str(state.pki_dir),
        # What the controller-manager signs (the kubelets' own renewed client certificates) lives as long as
        # what the provisioner issues: spec.pki.leafValidity.
        "pki_leaf_seconds": int(cluster.spec.pki.leaf.total_seconds()),
        "state_dir": str(state.root),
        # Paths, ports, files and units on the nodes (provisioner/layout.py); roles derive their defaults from it.
        "layout": layout.group_vars(),
    }


def _checksums(artifacts_dir: Path) -> dict[str, str]:
    """path -> sha256 from the artifact set's manifest; empty when the set is not there yet."""
    try:
        manifest = json.loads((artifacts_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {f["path"]: f["sha256"] for f in manifest.get("files", []) if "path" in f and "sha256" in f}


def write(
    cluster: Cluster, state: State, hosts: list[HostConnection], artifacts_dir: Path, planned: Sequence[Node] = ()
) -> None:
    state.ensure()
    _write_yaml(state.inventory_file, inventory(cluster, hosts, planned))
    _write_yaml(state.group_vars_file, group_vars(cluster, state, artifacts_dir))


def write_machine_list(cluster: Cluster, state: State) -> Path:
    state.ensure()
    state.machines_file.write_text(json.dumps(machine_list(cluster), indent=2) + "\n")
    return state.machines_file


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by provisioner from the cluster spec. Do not edit: edit the spec.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
