"""The PKI a user relies on: right names in the certificates, private keys private, made once."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import stat
from pathlib import Path

import clusters
import jinja2
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner import inventory, layout, paths, pki, spec
from provisioner.hosts import HostConnection
from provisioner.state import State


@pytest.fixture
def cluster() -> spec.Cluster:
    return spec.load(paths.default_spec())


def _cert(state: State, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((state.pki_dir / f"{name}.crt").read_bytes())


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(i) for i in san.get_values_for_type(x509.IPAddress)}


def test_apiserver_certificate_names_service_ip_and_master(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    dns, ips = _sans(_cert(state, "apiserver"))
    assert {"10.96.0.1", "192.168.56.10", "127.0.0.1"} <= ips
    assert {"kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "master"} <= dns


def test_every_leaf_is_signed_by_its_ca_and_only_etcd_s_by_etcd_s(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    cas = {stem: _cert(state, stem) for stem in pki.CAS}
    etcd_signed = {leaf.name for leaf in pki.cluster_certs(cluster) if leaf.ca == "etcd-ca"}
    assert etcd_signed == {"etcd-server", "etcd-peer", "apiserver-etcd-client"}
    for leaf in pki.cluster_certs(cluster):
        _cert(state, leaf.name).verify_directly_issued_by(cas[leaf.ca])


def test_kubelet_certificates_match_what_the_node_authorizer_and_apiserver_expect(
    cluster: spec.Cluster, tmp_path: Path
) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    client = _cert(state, "kubelet-worker-1")
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:worker-1"
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    serving = _cert(state, "kubelet-server-worker-2")
    assert _sans(serving) == ({"worker-2"}, {"192.168.56.12"})
    usages = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages


def test_private_keys_are_readable_by_their_owner_only(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    secret_files = [*state.pki_dir.glob("*.key"), state.pki_dir / "encryption-config.yaml"]
    secret_files += list((state.pki_dir / "kubeconfigs").glob("*.kubeconfig"))
    assert len(secret_files) > 10
    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_second_run_reuses_everything_byte_for_byte(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    before = {p: p.read_bytes() for p in state.pki_dir.rglob("*") if p.is_file()}
    again = pki.ensure(cluster, state)
    assert again.issued == []
    assert {p: p.read_bytes() for p in state.pki_dir.rglob("*") if p.is_file()} == before


def test_a_changed_node_address_reissues_only_that_nodes_serving_certificate(
    cluster: spec.Cluster, tmp_path: Path
) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    nodes = [
        n.model_copy(update={"address": ipaddress.IPv4Address("192.168.56.21")}) if n.name == "worker-2" else n
        for n in cluster.spec.nodes
    ]
    moved = cluster.model_copy(update={"spec": cluster.spec.model_copy(update={"nodes": nodes})})
    result = pki.ensure(moved, state)
    assert result.issued == ["kubelet-server-worker-2"]
    assert _sans(_cert(state, "kubelet-server-worker-2"))[1] == {"192.168.56.21"}


def test_a_certificate_near_expiry_is_renewed(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    later = datetime.datetime.now(datetime.UTC) + cluster.spec.pki.leaf - datetime.timedelta(days=10)
    result = pki.ensure(cluster, state, now=later)
    assert "apiserver" in result.issued
    assert "ca" not in result.issued


def test_admin_kubeconfig_points_at_the_master_with_embedded_credentials(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    doc = yaml.safe_load((state.pki_dir / "kubeconfigs" / "admin.kubeconfig").read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://192.168.56.10:6443"
    cert = x509.load_pem_x509_certificate(base64.b64decode(doc["users"][0]["user"]["client-certificate-data"]))
    # cluster-admin through RBAC, not the unrestrictable system:masters (that is the break-glass super-admin's)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "provisioner:cluster-admins"
    assert doc["current-context"] == "lab"


def test_secrets_encryption_key_is_32_random_bytes_and_kept(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    doc = yaml.safe_load((state.pki_dir / "encryption-config.yaml").read_text())
    secret = doc["resources"][0]["providers"][0]["secretbox"]["keys"][0]["secret"]
    assert len(base64.b64decode(secret)) == 32
    other = State(tmp_path / "other")
    pki.ensure(cluster, other)
    assert (other.pki_dir / "encryption-config.yaml").read_text() != (
        state.pki_dir / "encryption-config.yaml"
    ).read_text()


def test_an_aescbc_config_of_an_older_cluster_gets_a_secretbox_key_first_and_keeps_its_own(
    cluster: spec.Cluster, tmp_path: Path
) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    path = state.pki_dir / "encryption-config.yaml"
    old = {"aescbc": {"keys": [{"name": "key1", "secret": "b2xkIGtleQ=="}]}}
    doc = yaml.safe_load(path.read_text())
    doc["resources"][0]["providers"] = [old, {"identity": {}}]
    path.write_text(yaml.safe_dump(doc))
    pki.ensure(cluster, state)
    providers = yaml.safe_load(path.read_text())["resources"][0]["providers"]
    assert list(providers[0]) == ["secretbox"] and providers[1:] == [old, {"identity": {}}]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    assert "encryption-config" in pki.ensure(cluster, state).reused and path.read_bytes() == before


# What `up` issued for the default lab before several masters were possible: an existing lab must find
# every file where it was, so its second `up` copies nothing.
ONE_MASTER_FILES = [
    "admin.crt",
    "admin.key",
    "apiserver-etcd-client.crt",
    "apiserver-etcd-client.key",
    "apiserver-health-check.crt",
    "apiserver-health-check.key",
    "apiserver-kubelet-client.crt",
    "apiserver-kubelet-client.key",
    "apiserver.crt",
    "apiserver.key",
    "ca.crt",
    "ca.key",
    "controller-manager.crt",
    "controller-manager.key",
    "encryption-config.yaml",
    "etcd-ca.crt",
    "etcd-ca.key",
    "etcd-peer.crt",
    "etcd-peer.key",
    "etcd-server.crt",
    "etcd-server.key",
    "kube-proxy.crt",
    "kube-proxy.key",
    "kubeconfigs/admin-local.kubeconfig",
    "kubeconfigs/admin.kubeconfig",
    "kubeconfigs/controller-manager.kubeconfig",
    "kubeconfigs/kube-proxy.kubeconfig",
    "kubeconfigs/kubelet-worker-1.kubeconfig",
    "kubeconfigs/kubelet-worker-2.kubeconfig",
    "kubeconfigs/scheduler.kubeconfig",
    "kubeconfigs/super-admin-local.kubeconfig",
    "kubelet-server-worker-1.crt",
    "kubelet-server-worker-1.key",
    "kubelet-server-worker-2.crt",
    "kubelet-server-worker-2.key",
    "kubelet-worker-1.crt",
    "kubelet-worker-1.key",
    "kubelet-worker-2.crt",
    "kubelet-worker-2.key",
    "sa.key",
    "sa.pub",
    "scheduler.crt",
    "scheduler.key",
    "super-admin.crt",
    "super-admin.key",
]


def _files(state: State) -> list[str]:
    return sorted(str(p.relative_to(state.pki_dir)) for p in state.pki_dir.rglob("*") if p.is_file())


def test_one_master_gets_the_files_and_etcd_names_it_always_had(cluster: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    assert _files(state) == ONE_MASTER_FILES
    for stem in ("etcd-server", "etcd-peer"):
        cert = _cert(state, stem)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "master"
        assert _sans(cert) == ({"master", "localhost"}, {"192.168.56.10", "127.0.0.1"})
    assert _sans(_cert(state, "apiserver")) == (
        {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
        | {"master", "localhost"},
        {"10.96.0.1", "192.168.56.10", "127.0.0.1"},
    )


@pytest.fixture
def ha() -> spec.Cluster:
    return clusters.ha()


MASTERS = {"master-1": "192.168.56.10", "master-2": "192.168.56.11", "master-3": "192.168.56.12"}


def test_every_master_gets_etcd_certificates_naming_itself_only(ha: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(ha, state)
    etcd_ca = _cert(state, "etcd-ca")
    for name, address in MASTERS.items():
        server, peer = _cert(state, f"etcd-server-{name}"), _cert(state, f"etcd-peer-{name}")
        assert _sans(server) == ({name, "localhost"}, {address, "127.0.0.1"})
        assert _sans(peer) == ({name}, {address})
        for cert in (server, peer):
            cert.verify_directly_issued_by(etcd_ca)
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
        # the CN etcd's --peer-cert-allowed-cn accepts, and no certificate but a peer's carries it
        assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == layout.ETCD_PEER_CN
    carriers = {leaf.name for leaf in pki.cluster_certs(ha) if leaf.cn == layout.ETCD_PEER_CN}
    assert carriers == {f"etcd-peer-{name}" for name in MASTERS}
    assert not (state.pki_dir / "etcd-server.crt").exists() and not (state.pki_dir / "etcd-peer.crt").exists()


def test_the_apiserver_certificate_names_every_master(ha: spec.Cluster, tmp_path: Path) -> None:
    state = State(tmp_path)
    pki.ensure(ha, state)
    dns, ips = _sans(_cert(state, "apiserver"))
    assert dns == {
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        *MASTERS,
    }
    assert ips == {"10.96.0.1", "127.0.0.1", *MASTERS.values()}


@pytest.mark.parametrize("which", ["default", "ha"])
def test_every_file_site_yml_installs_on_a_node_is_in_the_pki(which: str, tmp_path: Path) -> None:
    """The certs phase's sources, resolved with each host's inventory variables, are files pki.ensure made."""
    cluster = getattr(clusters, which)()
    state = State(tmp_path)
    pki.ensure(cluster, state)
    hosts = [
        HostConnection(n.name, n.role, str(n.address), str(n.address), 22, "root", Path("/k"))
        for n in cluster.spec.nodes
    ]
    groups = inventory.inventory(cluster, hosts)["all"]["children"]["k8s_cluster"]["children"]
    plays = yaml.safe_load((paths.REPO_ROOT / "playbooks" / "site.yml").read_text())
    checked = 0
    for play in plays:
        for role in play["roles"]:
            if role["role"] != "certs":
                continue
            for name, host_vars in groups[play["hosts"]]["hosts"].items():
                for entry in role["vars"]["certs_files"]:
                    src = jinja2.Template(entry["src"]).render(inventory_hostname=name, **host_vars)
                    assert (state.pki_dir / src).is_file(), f"{name}: {src} (for {entry['dest']}) was not issued"
                    checked += 1
    assert checked > 20 * len(cluster.masters)


def _servers(state: State) -> dict[str, str]:
    return {
        path.stem: yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
        for path in (state.pki_dir / "kubeconfigs").glob("*.kubeconfig")
    }


def test_workers_reach_the_one_master_directly_and_several_through_their_loopback(
    cluster: spec.Cluster, ha: spec.Cluster, tmp_path: Path
) -> None:
    one, three = State(tmp_path / "one"), State(tmp_path / "three")
    pki.ensure(cluster, one)
    pki.ensure(ha, three)
    local = {
        n: "https://127.0.0.1:6443" for n in ("admin-local", "super-admin-local", "controller-manager", "scheduler")
    }
    workers = ("kube-proxy", "kubelet-worker-1", "kubelet-worker-2")
    assert _servers(one) == {
        **local,
        "admin": "https://192.168.56.10:6443",
        **dict.fromkeys(workers, "https://192.168.56.10:6443"),
    }
    # the load balancer on each worker's loopback, which the apiserver certificate names (127.0.0.1)
    lb = f"https://127.0.0.1:{layout.PORTS['apiserver_lb']}"
    assert _servers(three) == {**local, "admin": "https://192.168.56.10:6443", **dict.fromkeys(workers, lb)}


def _with_pki(cluster: spec.Cluster, leaf: str, margin: str) -> spec.Cluster:
    lifetimes = spec.PkiSpec.model_validate({"leafValidity": leaf, "renewBefore": margin})
    body = cluster.spec.model_copy(update={"pki": lifetimes})
    return cluster.model_copy(update={"spec": body})


def test_leaves_live_as_long_as_the_spec_says_and_are_renewed_within_its_margin(
    cluster: spec.Cluster, tmp_path: Path
) -> None:
    state = State(tmp_path)
    default = _cert_after_ensure(cluster, state, "apiserver")
    assert default.not_valid_after_utc - default.not_valid_before_utc == datetime.timedelta(days=365, minutes=5)
    short = _with_pki(cluster, "2h", "30m")
    result = pki.ensure(short, state)  # the spec shortened the lifetime: every leaf again, no CA
    assert "apiserver" in result.issued and "ca" not in result.issued and "etcd-ca" not in result.issued
    cert = _cert(state, "apiserver")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(hours=2, minutes=5)
    now = datetime.datetime.now(datetime.UTC)
    assert "apiserver" in pki.ensure(short, state, now=now).reused
    assert "apiserver" in pki.ensure(short, state, now=now + datetime.timedelta(minutes=80)).reused
    assert "apiserver" in pki.ensure(short, state, now=now + datetime.timedelta(minutes=95)).issued
    ca = _cert(state, "ca")
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == spec.CA_VALIDITY + pki.BACKDATE


def _cert_after_ensure(cluster: spec.Cluster, state: State, name: str) -> x509.Certificate:
    pki.ensure(cluster, state)
    return _cert(state, name)
