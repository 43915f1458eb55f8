"""Certificate checks shared by the host modules: validity window, days left, subject alternative names."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterable

from provisioner.certs import CertFacts, describe_left, read_der
from provisioner.certs import kubeconfig_certs as kubeconfig_certs
from provisioner.certs import read_pem as read_pem


def validity_problems(name: str, cert: CertFacts, now: datetime.datetime, margin: datetime.timedelta) -> list[str]:
    """Why a certificate breaks the promise, or nothing. `margin` is spec.pki.renewBefore: a certificate with
    less left is one `up` would already have renewed."""
    if cert.not_before > now:
        return [f"{name} ({cert.subject}) is not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC (clock skew?)"]
    left = cert.left(now)
    fix = "`provisioner certs renew --all` issues new ones"
    if left.total_seconds() < 0:
        return [f"{name} ({cert.subject}) expired at {cert.not_after:%Y-%m-%d %H:%M} UTC; {fix}"]
    if left < margin:
        return [
            f"{name} ({cert.subject}) expires in {describe_left(left)}, less than spec.pki.renewBefore "
            f"({describe_left(margin)}); {fix}"
        ]
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
