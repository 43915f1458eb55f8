"""`provisioner certs`: every certificate the cluster uses, where it is used, and how long it has left.

Read where each one is used, not from the admin machine's copy: on every node the certificates under the
PKI directory and the client certificates embedded in its kubeconfigs, as installed; on the admin machine
the PKI directory and the kubeconfigs `up` wrote there. A certificate a node still holds after the admin
machine's copy was renewed shows with its own (older) not-after.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import shlex
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from provisioner import layout
from provisioner.hosts import NodeCommandError, Ssh
from provisioner.state import State

ADMIN = "admin machine"
# Marks the start of each file in what node_script() prints.
HEADER = "==> "
# What `up`, `status` and `verify` warn about. What they fail on is spec.pki.renewBefore: a certificate
# with less than that left is one `up` would have renewed (`certs --warn-days` defaults to it).
WARN_DAYS = 90


@dataclass(frozen=True)
class CertFacts:
    """What a certificate says, as the checks and the table need it."""

    subject: str  # RFC 4514
    name: str  # CN, then the organisations (the groups RBAC sees): "kubernetes-admin (provisioner:cluster-admins)"
    issuer: str  # the issuer's, the same way
    not_before: datetime.datetime
    not_after: datetime.datetime
    dns: frozenset[str]
    ips: frozenset[str]
    is_ca: bool
    serial: int = 0

    @property
    def identity(self) -> tuple[str, str, tuple[str, ...]]:
        """What a renewed certificate keeps: subject, issuer and names (a new one differs in serial)."""
        return (self.name, self.issuer, self.sans)

    def left(self, now: datetime.datetime) -> datetime.timedelta:
        return self.not_after - now

    def days_left(self, now: datetime.datetime) -> float:
        return self.left(now).total_seconds() / 86400

    @property
    def sans(self) -> tuple[str, ...]:
        return (*sorted(self.dns), *sorted(self.ips))


def read_pem(data: bytes) -> list[CertFacts]:
    return [_facts(c) for c in x509.load_pem_x509_certificates(data)] if b"BEGIN CERTIFICATE" in data else []


def read_der(data: bytes) -> CertFacts:
    return _facts(x509.load_der_x509_certificate(data))


def kubeconfig_certs(text: str, *, clients_only: bool = False) -> list[CertFacts]:
    """Certificates embedded in a kubeconfig: the cluster CA (unless clients_only) and the client certificate."""
    data = yaml.safe_load(text) or {}
    found: list[CertFacts] = []
    for entry in [] if clients_only else data.get("clusters") or []:
        if ca := (entry.get("cluster") or {}).get("certificate-authority-data"):
            found += read_pem(base64.b64decode(ca))
    for entry in data.get("users") or []:
        if crt := (entry.get("user") or {}).get("client-certificate-data"):
            found += read_pem(base64.b64decode(crt))
    return found


@dataclass(frozen=True)
class Found:
    """One certificate as installed: where, in which file, and what it says."""

    where: str  # a node's name, or ADMIN
    file: str
    cert: CertFacts


@dataclass(frozen=True)
class Unreadable:
    where: str
    file: str
    cause: str


def node_script(kube_dir: str = layout.DIRS.kube, rotated: str = layout.KUBELET_ROTATED_CLIENT) -> str:
    """Prints every certificate of a node's PKI dir, then every kubeconfig's embedded client certificate,
    then the client certificate the kubelet renewed itself, if any (it uses that one instead of its
    kubeconfig's), each after a HEADER line naming its file (relative to the Kubernetes dir, the kubelet's
    absolute). Reads only; root-only files are why it runs as root."""
    d, r = shlex.quote(kube_dir), shlex.quote(rotated)
    return (
        f'[ -f {r} ] && {{ echo "{HEADER}"{r}; sed -n "/BEGIN CERTIFICATE/,/END CERTIFICATE/p" {r}; }}\n'
        f"cd {d} 2>/dev/null || exit 0\n"
        f'for f in pki/*.crt; do [ -f "$f" ] && {{ echo "{HEADER}$f"; cat "$f"; }}; done\n'
        'for f in *.kubeconfig *.conf; do [ -f "$f" ] || continue\n'
        '  data=$(sed -n "s/^ *client-certificate-data: *//p" "$f" | head -n 1)\n'
        f'  [ -n "$data" ] && {{ echo "{HEADER}$f"; printf "%s" "$data" | base64 -d; echo; }}\n'
        "done\n"
        "true\n"
    )


def parse_node_output(where: str, text: str) -> list[Found | Unreadable]:
    """What node_script printed, as certificates (a file that does not parse is named, not skipped)."""
    found: list[Found | Unreadable] = []
    name: str | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), HEADER]:
        if line.startswith(HEADER):
            if name is not None:
                found.extend(_parse_pem(where, name, "\n".join(lines).encode()))
            name, lines = line[len(HEADER) :], []
        else:
            lines.append(line)
    return found


def admin_files(state: State) -> list[Found | Unreadable]:
    """The admin machine's own: the PKI directory's certificates and the client certificates of the
    kubeconfigs `up` wrote (the one the tools use inside the lab, the one your shell uses)."""
    found: list[Found | Unreadable] = []
    if state.pki_dir.is_dir():
        for path in sorted(state.pki_dir.glob("*.crt")):
            found.extend(_parse_pem(ADMIN, str(path), path.read_bytes()))
    for path in (state.kubeconfig, state.user_kubeconfig):
        if path.is_file():
            found.extend(_kubeconfig_certs(ADMIN, path))
    return found


def from_nodes(ssh: Ssh, nodes: Sequence[str], timeout: float = 90) -> list[Found | Unreadable]:
    """Every node read at once (under emulation one read takes seconds); a node that does not answer is
    named with the cause."""

    def read(node: str) -> list[Found | Unreadable]:
        try:
            return parse_node_output(node, ssh.text(node, node_script(), timeout=timeout))
        except NodeCommandError as exc:
            return [Unreadable(node, "(node)", exc.cause)]

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(nodes)))) as pool:
        return [item for part in pool.map(read, nodes) for item in part]


def everywhere(state: State, ssh: Ssh, nodes: Sequence[str]) -> list[Found | Unreadable]:
    """What `provisioner certs` lists: the admin machine's own, then every node's as installed."""
    return admin_files(state) + from_nodes(ssh, nodes)


def below(found: Iterable[Found | Unreadable], days: float, now: datetime.datetime) -> list[Found]:
    return [f for f in found if isinstance(f, Found) and f.cert.days_left(now) < days]


def expiry_warning(state: State, now: datetime.datetime | None = None) -> str | None:
    """One line when any certificate of the admin machine's PKI has fewer than WARN_DAYS left (what `up`
    and `status` say; `provisioner certs` shows them as installed on the nodes)."""
    now = now or datetime.datetime.now(datetime.UTC)
    due = sorted(below(admin_files(state), WARN_DAYS, now), key=lambda f: f.cert.not_after)
    if not due:
        return None
    first = due[0]
    return (
        f"{len(due)} certificate(s) have fewer than {WARN_DAYS} days left, the first {Path(first.file).name} "
        f"({first.cert.name}): {describe_left(first.cert.left(now))}; `provisioner certs` shows them as installed"
    )


def describe_left(left: datetime.timedelta) -> str:
    """3 h 20 min, 12 d, or 'expired 2 h ago': what a person needs, at the scale that matters."""
    seconds = left.total_seconds()
    span = abs(seconds)
    if span >= 2 * 86400:
        text = f"{span / 86400:.0f} d"
    elif span >= 3600:
        text = f"{int(span // 3600)} h {int(span % 3600 // 60)} min"
    else:
        text = f"{int(span // 60)} min"
    return text if seconds >= 0 else f"expired {text} ago"


# --- internals -------------------------------------------------------------------------------------


def _parse_pem(where: str, file: str, data: bytes) -> list[Found | Unreadable]:
    try:
        return [Found(where, file, cert) for cert in read_pem(data)] or [
            Unreadable(where, file, "holds no PEM certificate")
        ]
    except ValueError as exc:
        return [Unreadable(where, file, f"not a PEM certificate ({exc})")]


def _kubeconfig_certs(where: str, path: Path) -> list[Found | Unreadable]:
    try:
        return [Found(where, str(path), cert) for cert in kubeconfig_certs(path.read_text(), clients_only=True)]
    except (OSError, ValueError, yaml.YAMLError, AttributeError, TypeError, binascii.Error) as exc:
        return [Unreadable(where, str(path), f"not a kubeconfig with readable certificates ({exc})")]


def _facts(cert: x509.Certificate) -> CertFacts:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = frozenset(san.get_values_for_type(x509.DNSName))
        ips = frozenset(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = frozenset(), frozenset()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertFacts(
        subject=cert.subject.rfc4514_string(),
        name=_name(cert.subject),
        issuer=_name(cert.issuer),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns=dns,
        ips=ips,
        is_ca=is_ca,
        serial=cert.serial_number,
    )


def _name(name: x509.Name) -> str:
    cn = ", ".join(str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)) or name.rfc4514_string()
    orgs = [str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return f"{cn} ({', '.join(orgs)})" if orgs else cn


def sort_key(item: Found | Unreadable) -> tuple[int, str, str]:
    """Admin machine first, then the nodes by name; files by name."""
    return (0 if item.where == ADMIN else 1, item.where, item.file)
