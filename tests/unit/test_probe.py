"""verify's one probe script, run for real against loopback HTTP and TLS servers in each mode and each way it runs.

The three ways: on this machine under a prefix (the NodePort check), as a shell command a node's shell runs
(the kill checks' component /healthz over SSH, also under `sudo -n sh -c`), and through testinfra's
``host.run`` (the host modules' health and served-certificate checks).
"""

from __future__ import annotations

import http.server
import os
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
from testinfra.host import Host

from provisioner import paths, pki, spec
from provisioner.hosts import HostConnection
from provisioner.state import State
from provisioner.verify import certs, probe
from provisioner.verify.hosts.helpers import https_get, served_certificate_pem
from provisioner.verify.kube import NotYet, Ssh, http_get
from provisioner.verify.selfheal import component_healthz

REFUSED = "URLError: <urlopen error [Errno 111] Connection refused>"
NOT_READY = "not ready\n[-]etcd failed"


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers /healthz with "ok", unless the server is failing; any other path is not ready (503)."""

    server: Server

    def do_GET(self) -> None:
        ok = self.path == "/healthz" and not self.server.failing
        body = b"ok" if ok else NOT_READY.encode() + b"\n"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    failing = False


@dataclass(frozen=True)
class Endpoints:
    http: int
    https: int
    https_failing: int
    refused: int

    def url(self, scheme: str, port: int, path: str = "/healthz") -> str:
        return f"{scheme}://127.0.0.1:{port}{path}"


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """Plain HTTP, TLS with the project's apiserver certificate (a CA this machine does not trust), and a
    TLS server whose /healthz fails; plus a port where nothing listens."""
    state = State(tmp_path_factory.mktemp("pki"))
    pki.ensure(spec.load(paths.default_spec()), state)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(state.pki_dir / "apiserver.crt", state.pki_dir / "apiserver.key")
    servers = []
    for tls, failing in ((False, False), (True, False), (True, True)):
        server = Server(("127.0.0.1", 0), Handler)
        server.failing = failing
        if tls:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = s.getsockname()[1]
    yield Endpoints(*(s.server_address[1] for s in servers), refused=refused)
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def node_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's `python3` on a node is this environment's here."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


# --- on this machine, under the lab prefix ----------------------------------------------------------------


@pytest.mark.parametrize("prefix", [(), ("env",)], ids=["no-prefix", "prefix"])
def test_local_get_returns_the_body(endpoints: Endpoints, prefix: tuple[str, ...]) -> None:
    assert http_get(prefix, endpoints.url("http", endpoints.http)) == "ok"


def test_local_get_reports_an_http_error_status_with_the_servers_answer(endpoints: Endpoints) -> None:
    url = endpoints.url("http", endpoints.http, "/fail")
    with pytest.raises(NotYet) as err:
        http_get((), url)
    assert str(err.value) == f"GET {url}: HTTP 503: {NOT_READY}"


def test_local_get_reports_a_refused_connection(endpoints: Endpoints) -> None:
    url = endpoints.url("http", endpoints.refused)
    with pytest.raises(NotYet) as err:
        http_get((), url)
    assert str(err.value) == f"GET {url}: {REFUSED}"


def test_get_verifies_the_certificate_unless_told_not_to(endpoints: Endpoints) -> None:
    url = endpoints.url("https", endpoints.https)
    verified = subprocess.run(probe.local_argv((), probe.get_args(url, 10)), capture_output=True, text=True)
    assert verified.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in probe.failure(verified.stderr).text
    unverified = probe.local_argv((), probe.get_args(url, 10, verify=False))
    done = subprocess.run(unverified, capture_output=True, text=True, check=True)
    assert probe.read_answer(done.stdout) == (200, "ok")


def test_cert_prints_the_served_certificate(endpoints: Endpoints) -> None:
    argv = probe.local_argv((), probe.cert_args("127.0.0.1", endpoints.https, 10))
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    served = certs.read_pem(done.stdout.encode())
    assert len(served) == 1 and "kubernetes.default.svc.cluster.local" in served[0].dns


def test_cert_reports_a_refused_connection(endpoints: Endpoints) -> None:
    argv = probe.local_argv((), probe.cert_args("127.0.0.1", endpoints.refused, 10))
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert probe.failure(proc.stderr) == probe.Failure(
        "ConnectionRefusedError: [Errno 111] Connection refused",
        "ConnectionRefusedError: [Errno 111] Connection refused",
    )


def test_stderr_that_is_not_the_probes_is_kept() -> None:
    assert probe.failure('Cannot open network namespace "lab"\nsh: 1: python3: not found\n') == probe.Failure(
        'Cannot open network namespace "lab"\nsh: 1: python3: not found', "sh: 1: python3: not found"
    )
    assert probe.failure("") == probe.Failure("", "")


# --- over SSH: a node's shell runs the command, as root or under sudo -n sh -c ------------------------------


@dataclass(frozen=True)
class LocalShell(Ssh):
    """Hands the command to this machine's shell as SSH hands it to the node's (sudo's own `sh -c` when not root)."""

    sudo: bool = False

    def command(self, node: str, script: str) -> list[str]:
        return ["sh", "-c", f"sh -c {shlex.quote(script)}" if self.sudo else script]


@pytest.mark.parametrize("sudo", [False, True], ids=["root", "sudo"])
def test_component_healthz_over_ssh(endpoints: Endpoints, sudo: bool) -> None:
    master = HostConnection("master", "master", "127.0.0.1", "127.0.0.1", 22, "root", Path("/nonexistent"))
    ssh = LocalShell({"master": master}, sudo=sudo)
    assert component_healthz(ssh, "master", endpoints.https) == "ok"
    assert component_healthz(ssh, "master", endpoints.https_failing) == ""  # 503: no answer worth reporting
    assert component_healthz(ssh, "master", endpoints.refused) == ""


# --- through testinfra's host.run (the host modules) --------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> Host:
    return testinfra.get_host("local://")


def test_https_get_through_testinfra(host: Host, endpoints: Endpoints) -> None:
    assert https_get(host, endpoints.url("https", endpoints.https)) == (200, "ok")
    assert https_get(host, endpoints.url("http", endpoints.http)) == (200, "ok")
    assert https_get(host, endpoints.url("https", endpoints.https_failing)) == (
        1,
        "urllib.error.HTTPError: HTTP Error 503: Service Unavailable",
    )
    assert https_get(host, endpoints.url("http", endpoints.refused)) == (1, f"urllib.error.{REFUSED}")


def test_served_certificate_through_testinfra(host: Host, endpoints: Endpoints) -> None:
    served = certs.read_pem(served_certificate_pem(host, "127.0.0.1", endpoints.https))
    assert len(served) == 1 and "10.96.0.1" in served[0].ips
    with pytest.raises(AssertionError) as err:
        served_certificate_pem(host, "127.0.0.1", endpoints.refused)
    assert str(err.value) == (
        f"no TLS answer on 127.0.0.1:{endpoints.refused}: ['ConnectionRefusedError: [Errno 111] Connection refused']"
    )
