"""The admin machine's loopback balancer (provisioner/forwarder.py), run for real: Debian's haproxy in front of
stand-ins for apiservers that speak TLS with the cluster PKI's apiserver certificate and answer /readyz as
told. What is under test is haproxy's configuration (the workers' balancer's too): it relays TLS untouched,
listens on loopback only, asks every apiserver /readyz with the health-check certificate, and sends nothing
to one that accepts connections but is not ready."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import clusters
import pytest

from provisioner import forwarder, layout, pki
from provisioner.state import State

needs_haproxy = pytest.mark.skipif(forwarder.haproxy() is None, reason="scripts/deps.sh installs haproxy")

# The health checks run every 3 s and a master is out after 3 failures, back after 2 good ones.
SWITCH_SECONDS = 30


@pytest.fixture
def state(tmp_path: Path) -> State:
    state = State(tmp_path / "state").ensure()
    pki.ensure(clusters.default(), state)
    return state


class Apiserver:
    """A TLS server with the apiserver's certificate that requires a client certificate from the cluster CA,
    answers /readyz with `ready_status`, and any other path with its own name."""

    def __init__(self, pki_dir: Path, address: str, port: int, name: str) -> None:
        self.name = name
        self.ready_status = 200
        self.checked_by: set[str] = set()  # the common names that asked /readyz
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki_dir / "apiserver.crt", pki_dir / "apiserver.key")
        context.load_verify_locations(pki_dir / "ca.crt")
        context.verify_mode = ssl.CERT_REQUIRED
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if urllib.parse.urlsplit(self.path).path == "/readyz":
                    subject = dict(x[0] for x in self.connection.getpeercert()["subject"])  # type: ignore[union-attr]
                    outer.checked_by.add(subject["commonName"])
                    status, body = outer.ready_status, b"ok" if outer.ready_status == 200 else b"not ready"
                else:
                    status, body = 200, outer.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port_on_both() -> int:
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.2", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")


@pytest.fixture
def apiservers(state: State) -> Iterator[tuple[Apiserver, Apiserver]]:
    port = _free_port_on_both()  # the apiservers share a port, as on the masters
    first = Apiserver(state.pki_dir, "127.0.0.1", port, "first")
    second = Apiserver(state.pki_dir, "127.0.0.2", port, "second")
    yield first, second
    first.close()
    second.close()


def _targets(*servers: Apiserver) -> list[str]:
    return [f"{s.server.server_address[0]}:{s.server.server_address[1]}" for s in servers]


def _ask(state: State, port: int) -> str:
    """Who answers a request through the forwarder, the client verifying the apiserver's certificate (for
    the address 127.0.0.1) against the cluster CA and presenting the admin's: TLS end to end."""
    context = ssl.create_default_context(cafile=str(state.pki_dir / "ca.crt"))
    context.load_cert_chain(state.pki_dir / "admin.crt", state.pki_dir / "admin.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /who HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    return answer.split(b"\r\n\r\n", 1)[1].decode()


def _answers(state: State, port: int, n: int = 8) -> set[str]:
    return {_ask(state, port) for _ in range(n)}


def _wait_until_only(state: State, port: int, name: str) -> float:
    """Seconds until 8 requests in a row are all answered by `name`; fails after SWITCH_SECONDS. A request
    in flight to a master the moment it is marked down is cut (on-marked-down shutdown-sessions): counted as
    not yet."""
    start = time.monotonic()
    seen: set[str] = set()
    while time.monotonic() - start < SWITCH_SECONDS:
        try:
            seen = _answers(state, port)
        except OSError as err:  # ssl.SSLError is an OSError
            seen = {f"cut: {err}"}
        if seen == {name}:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"still answered by {sorted(seen)} after {SWITCH_SECONDS} s, waiting for {name} only")


def _listens_on(port: int) -> set[str]:
    """Local addresses listening on `port` (from /proc/net/tcp, IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hexport = local.split(":")
        if int(hexport, 16) == port and state == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@needs_haproxy
def test_the_forwarder_relays_tls_listens_on_loopback_only_is_reused_and_stops(
    state: State, apiservers: tuple[Apiserver, Apiserver]
) -> None:
    first, _ = apiservers
    fwd = forwarder.ensure(state, _targets(first), None)  # no namespace here: the same haproxy, one hop
    try:
        assert _ask(state, fwd.port) == "first"
        assert _listens_on(fwd.port) == {"127.0.0.1"}
        again = forwarder.ensure(state, _targets(first), None)
        assert again == fwd  # the next `up` finds the running one
        assert forwarder.running(state) == fwd
        moved = forwarder.ensure(state, [_targets(first)[0].replace("127.0.0.1", "localhost")], None)
        assert moved.pid != fwd.pid and moved.port == fwd.port  # a new target: restarted on the same port
        fwd = moved
    finally:
        assert forwarder.stop(state)
    assert forwarder.running(state) is None
    assert not _listens_on(fwd.port)
    assert not forwarder.stop(state)


@needs_haproxy
def test_the_forwarder_fails_over_to_an_apiserver_that_answers(
    state: State, apiservers: tuple[Apiserver, Apiserver]
) -> None:
    """A dead first target (nothing listens there any more) does not cut the admin machine off: every
    connection is answered by the live one, from the first, before any health check has run."""
    first, second = apiservers
    targets = _targets(first, second)
    first.close()
    fwd = forwarder.ensure(state, targets, None)
    try:
        assert _answers(state, fwd.port) == {"second"}
    finally:
        forwarder.stop(state)


@needs_haproxy
def test_an_apiserver_that_is_not_ready_gets_no_connections_until_it_is(
    state: State, apiservers: tuple[Apiserver, Apiserver]
) -> None:
    first, second = apiservers
    fwd = forwarder.ensure(state, _targets(first, second), None)
    try:
        assert _answers(state, fwd.port, 12) == {"first", "second"}  # both ready: both get connections
        first.ready_status = 500  # listening, TLS fine, but not ready (as without etcd quorum)
        print(f"first not ready: second only after {_wait_until_only(state, fwd.port, 'second'):.1f} s")
        first.ready_status, second.ready_status = 200, 500
        print(f"then second not ready: first only after {_wait_until_only(state, fwd.port, 'first'):.1f} s")
    finally:
        forwarder.stop(state)
    # Both were asked, each with the balancers' own identity, which may read /readyz and nothing more.
    assert first.checked_by == second.checked_by == {layout.APISERVER_HEALTH_CHECK}


@needs_haproxy
def test_new_health_check_credentials_restart_the_forwarder(
    state: State, apiservers: tuple[Apiserver, Apiserver]
) -> None:
    first, _ = apiservers
    fwd = forwarder.ensure(state, _targets(first), None)
    try:
        pki.ensure(clusters.default(), state, renew=["apiserver-health-check"])
        renewed = forwarder.ensure(state, _targets(first), None)
        assert renewed.pid != fwd.pid and renewed.port == fwd.port
        assert renewed.credentials != fwd.credentials
        fwd = renewed
        assert _ask(state, fwd.port) == "first"
    finally:
        forwarder.stop(state)


def test_the_workers_balancer_is_handed_every_credential_its_configuration_names() -> None:
    """The config names files in $CREDENTIALS_DIRECTORY; the role's map (and so the unit's LoadCredential
    lines and the forwarder's links) must hold exactly those names, each from a file the PKI writes."""
    text = forwarder.config(41234, ["192.168.56.10:6443"], None)
    defaults = forwarder._role_defaults()
    named = {part.split("/", 1)[1].rstrip('"') for part in text.split() if "${CREDENTIALS_DIRECTORY}/" in part}
    given = defaults["apiserver_lb_credentials"]
    assert named == {"ca.crt", "health-check.crt"}
    assert set(given) == named | {"health-check.crt.key"}  # haproxy reads a certificate's key from <cert>.key
    issued = {f"{stem}.{ext}" for stem in pki.leaf_names(clusters.default()) for ext in ("crt", "key")}
    assert set(given.values()) <= issued | {"ca.crt"}


@needs_haproxy
def test_a_changed_configuration_restarts_the_forwarder(
    state: State, apiservers: tuple[Apiserver, Apiserver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new release of the balancer's template or defaults (here: another check interval) reaches a
    forwarder that an earlier `up` left running: same targets, same credentials, yet restarted."""
    first, _ = apiservers
    fwd = forwarder.ensure(state, _targets(first), None)
    try:
        defaults = forwarder._role_defaults()
        monkeypatch.setattr(forwarder, "_role_defaults", lambda: {**defaults, "apiserver_lb_check_interval": "4s"})
        changed = forwarder.ensure(state, _targets(first), None)
        assert changed.pid != fwd.pid and changed.port == fwd.port
        fwd = changed
        assert "inter 4s" in (state.root / "forwarder.cfg").read_text()
        assert forwarder.ensure(state, _targets(first), None) == fwd  # and then reused again
    finally:
        forwarder.stop(state)


def test_the_forwarder_config_is_the_workers_balancer_with_the_labs_namespace() -> None:
    text = forwarder.config(41234, ["192.168.56.10:6443", "192.168.56.11:6443"], "prov-ha")
    servers = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers == [
        ["server", "apiserver-1", "192.168.56.10:6443", "namespace", "prov-ha"],
        ["server", "apiserver-2", "192.168.56.11:6443", "namespace", "prov-ha"],
    ]
    assert "bind 127.0.0.1:41234" in text
    assert "on-marked-down shutdown-sessions" in text  # connections to a dead master are closed at once
    assert "namespace" not in forwarder.config(41234, ["10.0.0.1:6443"], None).split("backend", 1)[1]
