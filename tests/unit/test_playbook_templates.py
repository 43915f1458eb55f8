"""The roles' configuration templates, rendered by real Ansible on this machine for the default lab.

What a user would check in the files on the nodes: the sandbox image containerd pins is the one the
artifact set imports, each worker's pod network uses its own subnet and routes to the others, the
kubelet registers with its private address and only accepts authenticated callers.

One run of the project's runner renders every template of every role that site.yml applies, on the
hosts of the group site.yml applies it to, with the inventory and group vars `up` generates (only the
connection is local). Each role's defaults are loaded by Ansible from the role itself: the play includes
a stand-in for the role (tmp roles path) that holds the role's own defaults/ and templates/ and a
tasks file that renders the templates into a tmp directory instead of onto the node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import clusters
import localnode
import pytest
import yaml

from provisioner import inventory, layout, paths, pki, runner, spec
from provisioner.artifacts import image_names
from provisioner.events import EventBus
from provisioner.hosts import HostConnection
from provisioner.state import State

PLAYBOOKS = paths.REPO_ROOT / "playbooks"
ROLES = PLAYBOOKS / "roles"

# The tasks file of each stand-in role: every template the role has, rendered into render_dir.
RENDER_TASKS = """
- name: Output directory
  ansible.builtin.file:
    path: "{{ render_dir }}"
    state: directory
    mode: "0755"

- name: Render the role's templates
  ansible.builtin.template:
    src: "{{ item }}"
    dest: "{{ render_dir }}/{{ item | regex_replace('[.]j2$', '') }}"
    mode: "0644"
  loop: "{{ render_templates }}"
"""

# Variables a role's tasks set for one template (coredns computes its upstreams from the master's
# resolv.conf): rendered once per named variant, into <role>-<variant>.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "coredns": {"isolated": {"coredns_forward_to": []}, "online": {"coredns_forward_to": ["9.9.9.9"]}},
}


@pytest.fixture(scope="module")
def cluster() -> spec.Cluster:
    return spec.load(paths.default_spec())


def _render_playbook(roles: Path, out: Path) -> list[dict[str, Any]]:
    """site.yml's plays and roles, each role replaced by its stand-in's render tasks."""
    plays = []
    for play in yaml.safe_load((PLAYBOOKS / "site.yml").read_text()):
        tasks = []
        for entry in play["roles"]:
            role = entry["role"]
            if role == "certs":
                # The real role's digests of what each service reads, which the unit templates name.
                tasks.append(
                    {
                        "name": f"Digests of {play['name']}",
                        "ansible.builtin.include_role": {"name": str(ROLES / "certs"), "tasks_from": "digests"},
                        "vars": entry.get("vars", {}),
                    }
                )
                continue
            templates = sorted(p.name for p in (ROLES / role / "templates").glob("*.j2"))
            if not templates:
                continue
            standin = roles / role
            if not standin.exists():
                (standin / "tasks").mkdir(parents=True)
                (standin / "tasks" / "render.yml").write_text(RENDER_TASKS)
                # what Ansible loads from a role besides its tasks; meta/ would pull in other roles' tasks
                for part in ("defaults", "vars", "templates"):
                    if (ROLES / role / part).is_dir():
                        (standin / part).symlink_to(ROLES / role / part)
            for variant, extra in VARIANTS.get(role, {"": {}}).items():
                label = f"{role}-{variant}" if variant else role
                tasks.append(
                    {
                        "name": f"Render {label}",
                        "ansible.builtin.include_role": {"name": str(standin), "tasks_from": "render"},
                        "vars": {
                            **entry.get("vars", {}),
                            **extra,
                            "render_templates": templates,
                            "render_dir": f"{out}/{{{{ inventory_hostname }}}}/{label}",
                        },
                    }
                )
        if tasks:
            plays.append({"name": play["name"], "hosts": play["hosts"], "gather_facts": False, "tasks": tasks})
    return plays


def _render(cluster: spec.Cluster, tmp: Path) -> Path:
    """The directory holding <host>/<role>/<file> for every template site.yml renders on that host."""
    hosts = [
        HostConnection(n.name, n.role, str(n.address), str(n.address), 22, "root", Path("/k"))
        for n in cluster.spec.nodes
    ]
    out, roles = tmp / "out", tmp / "roles"
    state = localnode.local_state(tmp / "state", inventory.inventory(cluster, hosts))
    state.group_vars_file.write_text(yaml.safe_dump(inventory.group_vars(cluster, state, tmp / "artifacts")))
    pki.ensure(cluster, state)
    playbook = tmp / "render.yml"
    playbook.write_text(yaml.safe_dump(_render_playbook(roles, out), sort_keys=False))
    # The strategy `up` uses (mitogen when installed): a third of linear's time for these 33 files.
    runner.run_playbook(state, EventBus(), playbook=playbook, name="render")
    return out


@pytest.fixture(scope="module")
def rendered(cluster: spec.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(cluster, tmp_path_factory.mktemp("templates"))


@pytest.fixture(scope="module")
def ha_rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for the HA lab: three masters, two workers."""
    return _render(clusters.ha(), tmp_path_factory.mktemp("ha-templates"))


def render(rendered: Path, role: str, template: str, host: str) -> str:
    return (rendered / host / role / template.removesuffix(".j2")).read_text()


def test_containerd_pins_the_imported_pause_image_and_systemd_cgroups(cluster: spec.Cluster, rendered: Path) -> None:
    config = tomllib.loads(render(rendered, "containerd", "config.toml.j2", "worker-1"))
    assert config["version"] == 3
    pinned = config["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
    assert pinned == image_names(cluster.spec.kubernetes.version)["pause"]
    runc = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True


@pytest.mark.parametrize(("host", "subnet"), [("worker-1", "10.244.11.0/24"), ("worker-2", "10.244.12.0/24")])
def test_each_worker_hands_out_pod_addresses_from_its_own_subnet(rendered: Path, host: str, subnet: str) -> None:
    conflist = json.loads(render(rendered, "containerd", "10-bridge.conflist.j2", host))
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
    cluster: spec.Cluster, rendered: Path, host: str, routes: set[str]
) -> None:
    unit = render(rendered, "prep", "pod-network.service.j2", host)
    found = {line.split("route replace ", 1)[1] for line in unit.splitlines() if line.startswith("StandardInputText=")}
    assert routes <= found
    own = cluster.pod_cidrs[host]
    assert not any(route.startswith(f"{own} ") for route in found)
    # every other possible node of the /24 node subnet is routed already, so adding one changes nothing here
    assert len(found) == 254 - 1
    assert "10.244.13.0/24 via 192.168.56.13" in found
    assert "ExecStart=/usr/sbin/ip -force -batch -" in unit


def test_kubelet_registers_with_its_private_address_and_rejects_anonymous_callers(rendered: Path) -> None:
    unit = render(rendered, "kubelet", "kubelet.service.j2", "worker-2")
    assert "--node-ip=192.168.56.12" in unit
    assert "--hostname-override=worker-2" in unit
    config = yaml.safe_load(render(rendered, "kubelet", "config.yaml.j2", "worker-2"))
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["webhook"]["enabled"] is True
    assert config["authorization"]["mode"] == "Webhook"
    assert config["cgroupDriver"] == "systemd"
    assert config["clusterDNS"] == ["10.96.0.10"]
    assert config["readOnlyPort"] == 0


def test_apiserver_flags_lock_down_access(rendered: Path) -> None:
    unit = render(rendered, "control_plane", "kube-apiserver.service.j2", "master")
    for flag in (
        "--anonymous-auth=false",
        "--authorization-mode=Node,RBAC",
        "--encryption-provider-config=/etc/kubernetes/encryption-config.yaml",
        "--service-cluster-ip-range=10.96.0.0/12",
        "--kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt",
    ):
        assert flag in unit
    for component in ("kube-controller-manager", "kube-scheduler"):
        other = render(rendered, "control_plane", f"{component}.service.j2", "master")
        assert "--bind-address=127.0.0.1" in other


def test_etcd_serves_clients_on_loopback_only_with_client_certificates(rendered: Path) -> None:
    unit = render(rendered, "etcd", "etcd.service.j2", "master")
    assert "--listen-client-urls=https://127.0.0.1:2379 " in unit
    assert "--client-cert-auth=true" in unit
    assert "--peer-client-cert-auth=true" in unit


def test_coredns_serves_the_cluster_dns_ip_and_forwards_only_when_upstreams_exist(
    cluster: spec.Cluster, rendered: Path
) -> None:
    isolated = list(yaml.safe_load_all(render(rendered, "coredns-isolated", "coredns.yaml.j2", "master")))
    service = next(d for d in isolated if d["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    corefile = next(d for d in isolated if d["kind"] == "ConfigMap")["data"]["Corefile"]
    assert "forward" not in corefile
    online = list(yaml.safe_load_all(render(rendered, "coredns-online", "coredns.yaml.j2", "master")))
    assert "forward . 9.9.9.9" in next(d for d in online if d["kind"] == "ConfigMap")["data"]["Corefile"]
    deployment = next(d for d in online if d["kind"] == "Deployment")
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        == image_names(cluster.spec.kubernetes.version)["coredns"]
    )


def _flags(unit: str) -> dict[str, str]:
    """--name=value of a unit's ExecStart, one per flag (a repeated flag would hide the first)."""
    flags: dict[str, str] = {}
    for line in unit.splitlines():
        flag = line.strip().removesuffix("\\").strip()
        if flag.startswith("--"):
            name, _, value = flag.partition("=")
            assert name not in flags, f"{name} given twice"
            flags[name] = value
        elif flag.startswith("Environment=ETCD_"):
            # etcd reads ETCD_INITIAL_CLUSTER as --initial-cluster (a join file may override it)
            name, _, value = flag.removeprefix("Environment=").partition("=")
            flags["--" + name.removeprefix("ETCD_").lower().replace("_", "-")] = value
    return flags


def test_a_lone_etcd_member_keeps_clients_and_peers_on_loopback(rendered: Path) -> None:
    flags = _flags(render(rendered, "etcd", "etcd.service.j2", "master"))
    assert flags["--listen-client-urls"] == "https://127.0.0.1:2379"
    assert flags["--advertise-client-urls"] == "https://127.0.0.1:2379"
    assert flags["--listen-peer-urls"] == flags["--initial-advertise-peer-urls"] == "https://127.0.0.1:2380"
    assert flags["--initial-cluster"] == "master=https://127.0.0.1:2380"
    assert flags["--initial-cluster-state"] == "new"
    assert "--peer-cert-allowed-cn" not in flags
    apiserver = _flags(render(rendered, "control_plane", "kube-apiserver.service.j2", "master"))
    assert apiserver["--etcd-servers"] == "https://127.0.0.1:2379"


HA_MASTERS = {"master-1": "192.168.56.10", "master-2": "192.168.56.11", "master-3": "192.168.56.12"}


@pytest.mark.parametrize(("host", "address"), HA_MASTERS.items())
def test_three_etcd_members_form_one_cluster_on_the_node_network(ha_rendered: Path, host: str, address: str) -> None:
    flags = _flags(render(ha_rendered, "etcd", "etcd.service.j2", host))
    assert flags["--name"] == host
    assert flags["--initial-cluster"] == ",".join(f"{n}=https://{a}:2380" for n, a in HA_MASTERS.items())
    assert flags["--initial-cluster-state"] == "new"
    assert flags["--listen-peer-urls"] == flags["--initial-advertise-peer-urls"] == f"https://{address}:2380"
    unit = render(ha_rendered, "etcd", "etcd.service.j2", host)
    assert "EnvironmentFile=-/etc/kubernetes/etcd-join.env" in unit.splitlines()  # a joining member's override
    assert flags["--listen-client-urls"] == f"https://{address}:2379,https://127.0.0.1:2379"
    assert flags["--advertise-client-urls"] == f"https://{address}:2379"
    # peers authenticate with etcd's CA and must carry the CN only peer certificates carry
    assert flags["--peer-client-cert-auth"] == "true"
    assert flags["--peer-trusted-ca-file"] == "%d/etcd-ca.crt"
    assert flags["--peer-cert-allowed-cn"] == layout.ETCD_PEER_CN
    assert flags["--listen-metrics-urls"] == "http://127.0.0.1:2381"


@pytest.mark.parametrize(("host", "address"), HA_MASTERS.items())
def test_every_apiserver_uses_every_etcd_member_and_advertises_itself(
    ha_rendered: Path, host: str, address: str
) -> None:
    flags = _flags(render(ha_rendered, "control_plane", "kube-apiserver.service.j2", host))
    assert flags["--etcd-servers"] == ",".join(f"https://{a}:2379" for a in HA_MASTERS.values())
    assert flags["--advertise-address"] == address
    for component in ("kube-controller-manager", "kube-scheduler"):
        assert _flags(render(ha_rendered, "control_plane", f"{component}.service.j2", host))["--bind-address"] == (
            "127.0.0.1"
        )
    assert (
        _flags(render(ha_rendered, "control_plane", "kube-controller-manager.service.j2", host))["--leader-elect"]
        == "true"
    )
    scheduler = yaml.safe_load(render(ha_rendered, "control_plane", "kube-scheduler.yaml.j2", host))
    assert scheduler["leaderElection"]["leaderElect"] is True


def test_with_one_master_no_worker_gets_a_load_balancer(rendered: Path) -> None:
    assert not list(rendered.glob("*/apiserver_lb"))


@pytest.mark.parametrize("host", ["worker-1", "worker-2"])
def test_each_worker_balances_over_every_master_on_its_loopback_only(ha_rendered: Path, host: str) -> None:
    config = render(ha_rendered, "apiserver_lb", "apiserver-lb.cfg.j2", host)
    lines = [line.split() for line in config.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert ["bind", f"127.0.0.1:{layout.PORTS['apiserver_lb']}"] in lines
    assert [line[0] for line in lines].count("bind") == 1
    assert ["mode", "tcp"] in lines  # TLS passes through: the apiserver's own certificate reaches the client
    servers = [line[1:3] for line in lines if line[0] == "server"]
    assert servers == [[name, f"{address}:6443"] for name, address in HA_MASTERS.items()]
    default_server = next(line for line in lines if line[0] == "default-server")
    assert "check" in default_server
    unit = render(ha_rendered, "apiserver_lb", "kube-apiserver-lb.service.j2", host)
    assert f"ExecStart=/usr/sbin/haproxy -Ws -f {layout.DIRS.kube}/apiserver-lb.cfg" in unit
    assert "DynamicUser=true" in unit
    assert "Before=kubelet.service kube-proxy.service" in unit


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed here (Debian's haproxy package)")
def test_haproxy_accepts_the_load_balancer_configuration(ha_rendered: Path, tmp_path: Path) -> None:
    """With the credentials the unit hands it (LoadCredential, under the role's names) from a real PKI."""
    state = State(tmp_path / "state").ensure()
    pki.ensure(clusters.ha(), state)
    unit = render(ha_rendered, "apiserver_lb", "kube-apiserver-lb.service.j2", "worker-1")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for line in unit.splitlines():
        if line.startswith("LoadCredential="):
            name, source = line.removeprefix("LoadCredential=").split(":", 1)
            (credentials / name).symlink_to(state.pki_dir / Path(source).relative_to(layout.DIRS.pki))
    assert sorted(p.name for p in credentials.iterdir()) == ["ca.crt", "health-check.crt", "health-check.crt.key"]
    path = ha_rendered / "worker-1" / "apiserver_lb" / "apiserver-lb.cfg"
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
