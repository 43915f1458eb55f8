"""Small probes the host modules share. Plain functions: pytest fixtures live in conftest.py."""

from __future__ import annotations

from testinfra.host import Host

from provisioner import layout

# Names the JSON file of expectations hostchecks.py writes for these modules.
FACTS_ENV = "PROVISIONER_VERIFY_FACTS"


def node_name(host: Host) -> str:
    """The inventory name of a host (the AnsibleBackend keeps it; other backends give the address)."""
    return str(host.backend.host)


def https_get(host: Host, url: str) -> tuple[int, str]:
    """GET an https URL from the node itself (components bound to loopback), certificate not verified.

    python3 is on every node (Ansible needs it); curl may not be.
    """
    script = (
        "import ssl,sys,urllib.request;"
        "r=urllib.request.urlopen(sys.argv[1],context=ssl._create_unverified_context(),timeout=15);"
        "print(r.status);print(r.read().decode())"
    )
    cmd = host.run("python3 -c %s %s", script, url)
    if cmd.rc != 0:
        return cmd.rc, cmd.stderr.strip().splitlines()[-1] if cmd.stderr.strip() else f"exit {cmd.rc}"
    status, _, body = cmd.stdout.partition("\n")
    return int(status), body.strip()


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
    script = "import ssl,sys;print(ssl.get_server_certificate((sys.argv[1],int(sys.argv[2])),timeout=10))"
    cmd = host.run("python3 -c %s %s %s", script, address, str(port))
    assert cmd.rc == 0, f"no TLS answer on {address}:{port}: {cmd.stderr.strip().splitlines()[-1:] or cmd.rc}"
    return str(cmd.stdout).encode()
