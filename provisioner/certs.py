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
# Marks the start of each file in what NODE_SCRIPT prints.
HEADER = "==> "
# What `up`, `status` and `verify` warn about; `certs --warn-days` defaults to its own, shorter, threshold.
WARN_DAYS = 90
DEFAULT_FAIL_DAYS = 30


@dataclass(frozen=True)
class Found:
    """One certificate as installed: where, in which file, and what it says."""

    where: str  # a node's name, or ADMIN
    file: str
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_after: datetime.datetime
    is_ca: bool

    def left(self, now: datetime.datetime) -> datetime.timedelta:
        return self.not_after - now

    def days_left(self, now: datetime.datetime) -> float:
        return self.left(now).total_seconds() / 86400


@dataclass(frozen=True)
class Unreadable:
    where: str
    file: str
    cause: str


def node_script(kube_dir: str = layout.DIRS.kube) -> str:
    """Prints every certificate of a node's PKI dir, then every kubeconfig's embedded client certificate,
    each after a HEADER line naming its file (relative to the Kubernetes dir). Reads only; root-only files
    are why it runs as root."""
    d = shlex.quote(kube_dir)
    return (
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


def below(found: Iterable[Found | Unreadable], days: float, now: datetime.datetime) -> list[Found]:
    return [f for f in found if isinstance(f, Found) and f.days_left(now) < days]


def expiry_warning(state: State, now: datetime.datetime | None = None) -> str | None:
    """One line when any certificate of the admin machine's PKI has fewer than WARN_DAYS left (what `up`
    and `status` say; `provisioner certs` shows them as installed on the nodes)."""
    now = now or datetime.datetime.now(datetime.UTC)
    due = sorted(below(admin_files(state), WARN_DAYS, now), key=lambda f: f.not_after)
    if not due:
        return None
    first = due[0]
    return (
        f"{len(due)} certificate(s) have fewer than {WARN_DAYS} days left, the first {Path(first.file).name} "
        f"({first.subject}): {describe_left(first.left(now))}; `provisioner certs` shows them as installed"
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
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        return [Unreadable(where, file, f"not a PEM certificate ({exc})")]
    return [_found(where, file, cert) for cert in certs]


def _kubeconfig_certs(where: str, path: Path) -> list[Found | Unreadable]:
    try:
        doc = yaml.safe_load(path.read_text())
        users = doc.get("users") or []
        datas = [u["user"]["client-certificate-data"] for u in users if "client-certificate-data" in u.get("user", {})]
        return [item for data in datas for item in _parse_pem(where, str(path), base64.b64decode(data))]
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, binascii.Error) as exc:
        return [Unreadable(where, str(path), f"not a kubeconfig with an embedded client certificate ({exc})")]


def _found(where: str, file: str, cert: x509.Certificate) -> Found:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
        )
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return Found(where, file, _name(cert.subject), _name(cert.issuer), sans, cert.not_valid_after_utc, is_ca)


def _name(name: x509.Name) -> str:
    """CN, with the organisations (the groups RBAC sees) after it: 'kubernetes-admin (provisioner:cluster-admins)'."""
    cn = ", ".join(str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)) or name.rfc4514_string()
    orgs = [str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return f"{cn} ({', '.join(orgs)})" if orgs else cn


def sort_key(item: Found | Unreadable) -> tuple[int, str, str]:
    """Admin machine first, then the nodes by name; files by name."""
    return (0 if item.where == ADMIN else 1, item.where, item.file)
