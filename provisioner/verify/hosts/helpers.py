"""Small probes the host modules share. Plain functions: pytest fixtures live in conftest.py."""

from __future__ import annotations

import datetime
from typing import Any

from testinfra.host import Host

from provisioner import layout
from provisioner.verify import probe

# Names the JSON file of expectations hostchecks.py writes for these modules.
FACTS_ENV = "PROVISIONER_VERIFY_FACTS"


def renew_before(facts: dict[str, Any]) -> datetime.timedelta:
    """spec.pki.renewBefore: a certificate with less than this left fails its row."""
    return datetime.timedelta(seconds=float(facts["renew_before_seconds"]))


def node_name(host: Host) -> str:
    """The inventory name of a host (the AnsibleBackend keeps it; other backends give the address)."""
    return str(host.backend.host)


def https_get(host: Host, url: str) -> tuple[int, str]:
    """GET an https URL from the node itself (components bound to loopback), certificate not verified.

    An HTTP error status fails the probe: (its exit code, Python's last traceback line).
    """
    cmd = host.run(probe.node_command(probe.get_args(url, 15, verify=False)))
    if cmd.rc != 0:
        return cmd.rc, probe.failure(cmd.stderr).exception or f"exit {cmd.rc}"
    status, body = probe.read_answer(cmd.stdout)
    return status, body.strip()


def running_programs(host: Host) -> set[str]:
    """Names of running processes, read from /proc (the minimal image has no ps)."""
    out = host.check_output("cat /proc/[0-9]*/comm 2>/dev/null || true")
    return {line.strip() for line in out.splitlines() if line.strip()}


def assert_service(host: Host, unit: str) -> None:
    """The unit is active and enabled at boot."""
    service = host.service(unit)
    assert service.is_running, f"{unit} is not active"
    assert service.is_enabled, f"{unit} is not enabled at boot"


def assert_listening(host: Host, unit: str) -> None:
    """Something listens on every TCP port the layout gives the unit."""
    wanted = {layout.PORTS[p] for p in layout.unit(unit).ports}
    missing = sorted(wanted - listening_ports(host))
    assert not missing, f"{unit}: nothing listens on port(s) {missing}"


def listening_ports(host: Host) -> set[int]:
    ports = set()
    for spec in host.socket.get_listening_sockets():
        if spec.startswith("tcp://"):
            ports.add(int(spec.rsplit(":", 1)[1]))
    return ports


def served_certificate_pem(host: Host, address: str, port: int) -> bytes:
    """The certificate a TLS endpoint presents, fetched from the node itself (etcd listens on loopback only).

    Not verified: we inspect it. Endpoints demanding a client certificate still show theirs (TLS 1.3 sends
    the server's certificate before asking for the client's).
    """
    cmd = host.run(probe.node_command(probe.cert_args(address, port, 10)))
    if cmd.rc != 0:
        line = probe.failure(cmd.stderr).exception
        # The last stderr line shown as a one-item list, as this message always has.
        raise AssertionError(f"no TLS answer on {address}:{port}: {[line] if line else cmd.rc}")
    return str(cmd.stdout).encode()
