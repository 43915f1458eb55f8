"""The cluster's PKI: two CAs and every certificate, key and kubeconfig, made on the admin machine.

The cluster CA signs the components' and nodes' certificates (and the CSRs the controller-manager
approves); etcd has a CA of its own that signs only etcd's server and peer certificates and the
apiserver's etcd client certificate (CIS 2.7), so nothing a worker holds is accepted by etcd.

Everything is generated once into ``State.pki_dir`` and reused by later runs, so a second
``provisioner up`` copies byte-identical files and Ansible reports nothing changed. A leaf is
re-issued only when it is missing, no longer signed by the CA, close to expiry, or lacks a name
the cluster now needs (a node's address changed). Private keys are written 0600.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner import encryption, endpoints
from provisioner.errors import ProvisionerError
from provisioner.files import write_atomic
from provisioner.layout import (
    ADMINS_GROUP,
    APISERVER_HEALTH_CHECK,
    APISERVER_KUBELET_CLIENT,
    CLUSTER_DOMAIN,
    ETCD_PEER_CN,
)
from provisioner.spec import CA_VALIDITY, Cluster, Node, PkiSpec
from provisioner.state import State

# Leaves live spec.pki.leafValidity (default a year) and are re-issued by the first run with less than
# spec.pki.renewBefore left (default 30 days) instead of expiring under a cluster. A leaf is never made
# earlier than this before its issue, so a node whose clock is a little behind still accepts it.
BACKDATE = datetime.timedelta(minutes=5)
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class PkiError(ProvisionerError):
    """The PKI directory holds something unusable (a CA that cannot be read)."""


@dataclass(frozen=True)
class CertSpec:
    """One leaf certificate: its file stem, subject, usages and subject alternative names."""

    name: str
    cn: str
    orgs: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ca: str = "ca"  # file stem of the CA that signs it (one of CAS)

    @property
    def wanted_dns(self) -> set[str]:
        return set(self.dns)

    @property
    def wanted_ips(self) -> set[IP]:
        return {ipaddress.ip_address(i) for i in self.ips}


@dataclass(frozen=True)
class KubeconfigSpec:
    """A kubeconfig embedding a client certificate, for one component or user."""

    name: str
    cert: str  # CertSpec.name of the client certificate
    server: str
    user: str


@dataclass
class PkiResult:
    """What ``ensure`` did: the files it (re)wrote, for a progress line and for tests."""

    directory: Path
    issued: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


# The CAs' file stems; each one's common name is CLUSTER-STEM.
CAS = ("ca", "etcd-ca")


def etcd_certs(cluster: Cluster, master: Node) -> dict[str, str]:
    """The file stems of one master's etcd server and peer certificates (each installed on that master as
    etcd-server and etcd-peer). One master keeps the names they always had; several get one pair each."""
    if len(cluster.masters) == 1:
        return {"server": "etcd-server", "peer": "etcd-peer"}
    return {"server": f"etcd-server-{master.name}", "peer": f"etcd-peer-{master.name}"}


def cluster_certs(cluster: Cluster) -> list[CertSpec]:
    """Every leaf the cluster needs, derived from the spec (names, addresses, service IP)."""
    net = cluster.spec.network
    masters = cluster.masters
    single = len(masters) == 1
    # One apiserver certificate for every master: each master holds the cluster CA's key anyway (the
    # controller-manager signs with it), so a certificate per master would confine nothing.
    apiserver_dns = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
        *(m.name for m in masters),
        "localhost",
    )
    apiserver_ips = (str(net.apiserver_service_ip), *(str(m.address) for m in masters), "127.0.0.1")
    # etcd's own CA signs exactly these: each master's server and peer certificates, naming that master
    # only, and the apiserver's etcd client certificate.
    etcd = []
    for master in masters:
        names = etcd_certs(cluster, master)
        name, address = master.name, str(master.address)
        etcd.append(_etcd_leaf(names["server"], name, (name, "localhost"), (address, "127.0.0.1")))
        if single:
            # A lone member's peer certificate stays as it always was (its peer port is on loopback).
            etcd.append(_etcd_leaf(names["peer"], name, (name, "localhost"), (address, "127.0.0.1")))
        else:
            # Members of a cluster carry the one CN a member accepts from a peer (--peer-cert-allowed-cn).
            etcd.append(_etcd_leaf(names["peer"], ETCD_PEER_CN, (name,), (address,)))
    certs = [
        *etcd,
        CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True, ca="etcd-ca"),
        CertSpec("apiserver", "kube-apiserver", server=True, dns=apiserver_dns, ips=apiserver_ips),
        # The apiserver's identity towards kubelets (logs, exec): authorized by the kubelets' webhook through
        # its RBAC binding to system:kubelet-api-admin.
        CertSpec("apiserver-kubelet-client", APISERVER_KUBELET_CLIENT, client=True),
        # The daily admin: cluster-admin through an RBAC binding of its group, so it can be narrowed or revoked.
        CertSpec("admin", "kubernetes-admin", (ADMINS_GROUP,), client=True),
        # Break-glass only (it creates that binding; RBAC cannot restrict system:masters): root-only on the
        # master and in the PKI directory, never merged into a user's kubeconfig.
        CertSpec("super-admin", "kubernetes-super-admin", ("system:masters",), client=True),
        CertSpec("controller-manager", "system:kube-controller-manager", client=True),
        CertSpec("scheduler", "system:kube-scheduler", client=True),
        CertSpec("kube-proxy", "system:kube-proxy", ("system:node-proxier",), client=True),
        # The apiserver load balancers' readiness checks: an identity in no group, which may read /readyz.
        CertSpec("apiserver-health-check", APISERVER_HEALTH_CHECK, client=True),
    ]
    for node in cluster.workers:
        # The Node authorizer recognises a kubelet by exactly this user and group.
        certs.append(CertSpec(f"kubelet-{node.name}", f"system:node:{node.name}", ("system:nodes",), client=True))
        certs.append(
            CertSpec(f"kubelet-server-{node.name}", node.name, server=True, dns=(node.name,), ips=(str(node.address),))
        )
    return certs


def _etcd_leaf(stem: str, cn: str, dns: tuple[str, ...], ips: tuple[str, ...]) -> CertSpec:
    # etcd's server and peer certificates serve and, towards its peers and its own gateway, act as clients.
    return CertSpec(stem, cn, server=True, client=True, dns=dns, ips=ips, ca="etcd-ca")


def cluster_kubeconfigs(cluster: Cluster) -> list[KubeconfigSpec]:
    # Components on a master talk to the apiserver on loopback: no dependency on the node network.
    local = endpoints.LOCAL_APISERVER
    workers = endpoints.worker_apiserver(cluster)
    configs = [
        KubeconfigSpec("admin", "admin", endpoints.admin_apiserver(cluster), f"{cluster.name}-admin"),
        KubeconfigSpec("admin-local", "admin", local, f"{cluster.name}-admin"),
        KubeconfigSpec("super-admin-local", "super-admin", local, f"{cluster.name}-super-admin"),
        KubeconfigSpec("controller-manager", "controller-manager", local, "system:kube-controller-manager"),
        KubeconfigSpec("scheduler", "scheduler", local, "system:kube-scheduler"),
        KubeconfigSpec("kube-proxy", "kube-proxy", workers, "system:kube-proxy"),
    ]
    for node in cluster.workers:
        configs.append(
            KubeconfigSpec(f"kubelet-{node.name}", f"kubelet-{node.name}", workers, f"system:node:{node.name}")
        )
    return configs


def leaf_names(cluster: Cluster) -> list[str]:
    """The file stems of every leaf certificate the cluster uses: what `certs renew NAME` takes."""
    return [c.name for c in cluster_certs(cluster)]


def ensure(
    cluster: Cluster, state: State, now: datetime.datetime | None = None, renew: Collection[str] = ()
) -> PkiResult:
    """Create what is missing or stale under ``state.pki_dir``; reuse everything else.

    `renew`: leaf stems (leaf_names) issued anew even when current, from the same CA with a new key; the
    kubeconfigs that embed them follow. `now` is when they are issued (tests issue them in the past)."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory = state.pki_dir
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    result = PkiResult(directory)

    cas = {stem: _ensure_ca(directory, stem, f"{cluster.name}-{stem}", now, result) for stem in CAS}
    for spec in cluster_certs(cluster):
        ca_key, ca_cert = cas[spec.ca]
        _ensure_leaf(directory, spec, ca_key, ca_cert, now, result, cluster.spec.pki, spec.name in renew)
    _ensure_service_account_keys(directory, result)
    # Secrets at rest in etcd: the encryption config is encryption.py's (it also rotates the key).
    (result.issued if encryption.ensure_config(directory) else result.reused).append("encryption-config")
    kube_dir = directory / "kubeconfigs"
    kube_dir.mkdir(exist_ok=True)
    ca_pem = (directory / "ca.crt").read_bytes()
    for kc in cluster_kubeconfigs(cluster):
        text = kubeconfig(
            cluster.name, kc.server, ca_pem, kc.user, directory / f"{kc.cert}.crt", directory / f"{kc.cert}.key"
        )
        _write_if_changed(kube_dir / f"{kc.name}.kubeconfig", text.encode(), 0o600, result)
    return result


def kubeconfig(cluster_name: str, server: str, ca_pem: bytes, user: str, cert: Path, key: Path) -> str:
    """A kubeconfig with everything embedded, so one file is all a node or a user needs."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(cert.read_bytes()),
                    "client-key-data": b64(key.read_bytes()),
                },
            }
        ],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": cluster_name,
    }
    return yaml.safe_dump(doc, sort_keys=False)


# --- internals -------------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: accepted by etcd, every Kubernetes component and kubectl, and fast on emulated CPUs.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ensure_ca(
    directory: Path, stem: str, common_name: str, now: datetime.datetime, result: PkiResult
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise PkiError(
                str(cert_path),
                f"the CA {stem} cannot be read ({exc})",
                f"restore it, or remove {directory} to start over",
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(str(key_path), "the CA key is not an EC key", f"remove {directory} to start over")
        result.reused.append(stem)
        return key, cert
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    result.issued.append(stem)
    return key, cert


def _leaf_is_current(
    path: Path, spec: CertSpec, ca_cert: x509.Certificate, now: datetime.datetime, lifetimes: PkiSpec
) -> bool:
    key_path = path.with_suffix(".key")
    if not (path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.public_key() != key.public_key():
        return False
    if cert.not_valid_after_utc - now < lifetimes.margin:
        return False
    if cert.not_valid_after_utc - cert.not_valid_before_utc > lifetimes.leaf + BACKDATE + datetime.timedelta(minutes=1):
        return False  # issued before the spec shortened the lifetime
    subject_cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)}
    if [a.value for a in subject_cn] != [spec.cn] or orgs != set(spec.orgs):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns, ips = set(san.get_values_for_type(x509.DNSName)), set(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = set(), set()
    return dns == spec.wanted_dns and ips == spec.wanted_ips


def _ensure_leaf(
    directory: Path,
    spec: CertSpec,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime.datetime,
    result: PkiResult,
    lifetimes: PkiSpec,
    renew: bool = False,
) -> None:
    cert_path = directory / f"{spec.name}.crt"
    if not renew and _leaf_is_current(cert_path, spec, ca_cert, now, lifetimes):
        result.reused.append(spec.name)
        return
    key = _new_key()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in spec.orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, spec.cn))
    usages = [
        u
        for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, spec.server), (ExtendedKeyUsageOID.CLIENT_AUTH, spec.client))
        if on
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetimes.leaf, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns]
    names += [x509.IPAddress(ip) for ip in sorted(spec.wanted_ips, key=str)]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_atomic(cert_path.with_suffix(".key"), _key_pem(key), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    result.issued.append(spec.name)


def _ensure_service_account_keys(directory: Path, result: PkiResult) -> None:
    key_path, pub_path = directory / "sa.key", directory / "sa.pub"
    if key_path.exists() and pub_path.exists():
        result.reused.append("sa")
        return
    key = _new_key()
    write_atomic(key_path, _key_pem(key), 0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_atomic(pub_path, pub, 0o644)
    result.issued.append("sa")


def _write_if_changed(path: Path, data: bytes, mode: int, result: PkiResult) -> None:
    if path.exists() and path.read_bytes() == data:
        result.reused.append(path.name)
        return
    write_atomic(path, data, mode)
    result.issued.append(path.name)
