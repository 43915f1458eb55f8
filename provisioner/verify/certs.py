"""Certificate checks shared by the host modules: validity window, days left, subject alternative names."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import yaml
from cryptography import x509

# The seed's promise: nothing the cluster depends on expires within this many days.
MIN_DAYS_LEFT = 30


@dataclass(frozen=True)
class CertFacts:
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    dns: frozenset[str]
    ips: frozenset[str]

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


def read_pem(data: bytes) -> list[CertFacts]:
    return [_facts(c) for c in x509.load_pem_x509_certificates(data)] if b"BEGIN CERTIFICATE" in data else []


def read_der(data: bytes) -> CertFacts:
    return _facts(x509.load_der_x509_certificate(data))


def _facts(cert: x509.Certificate) -> CertFacts:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = frozenset(san.get_values_for_type(x509.DNSName))
        ips = frozenset(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = frozenset(), frozenset()
    return CertFacts(
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns=dns,
        ips=ips,
    )


def kubeconfig_certs(text: str) -> list[CertFacts]:
    """Certificates embedded in a kubeconfig (cluster CA and client certificate)."""
    data = yaml.safe_load(text) or {}
    found: list[CertFacts] = []
    for entry in data.get("clusters") or []:
        if ca := (entry.get("cluster") or {}).get("certificate-authority-data"):
            found += read_pem(base64.b64decode(ca))
    for entry in data.get("users") or []:
        if crt := (entry.get("user") or {}).get("client-certificate-data"):
            found += read_pem(base64.b64decode(crt))
    return found


def validity_problems(name: str, cert: CertFacts, now: datetime.datetime, min_days: int = MIN_DAYS_LEFT) -> list[str]:
    """Why a certificate breaks the promise, or nothing."""
    if cert.not_before > now:
        return [f"{name} ({cert.subject}) is not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC (clock skew?)"]
    left = cert.days_left(now)
    if left < 0:
        return [f"{name} ({cert.subject}) expired on {cert.not_after:%Y-%m-%d}"]
    if left < min_days:
        return [f"{name} ({cert.subject}) expires in {left:.0f} days, less than {min_days}"]
    return []


def missing_names(cert: CertFacts, dns: Iterable[str], ips: Iterable[str]) -> list[str]:
    """Expected subject alternative names the certificate lacks."""
    missing = sorted(set(dns) - cert.dns)
    missing += sorted(str(ipaddress.ip_address(i)) for i in ips if str(ipaddress.ip_address(i)) not in cert.ips)
    return missing


def served_certificate(address: str, port: int, timeout: float = 30) -> CertFacts:
    """The certificate a TLS endpoint presents, fetched without verifying it (we inspect, not trust).

    Endpoints that demand a client certificate (etcd) still show theirs: with TLS 1.3 the server's
    certificate arrives before it asks for ours. The bound covers TCP's SYN retries up to the one at
    15 s: a handshake with a freshly made, busy emulated node timed out once at 10 s.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((address, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ValueError(f"{address}:{port} presented no certificate")
    return read_der(der)
