"""etcd has a CA of its own: a worker's certificate is refused, and verify's probe tells the two apart.

The probe script verify runs on the master is run here for real, against loopback TLS servers that demand
client certificates from etcd's CA, as etcd does. secrets-current-key judges a real etcdctl listing against
the first key of an encryption config written by provisioner.encryption.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from provisioner import encryption, layout, paths, pki, spec
from provisioner.hosts import HostConnection, Ssh
from provisioner.state import State
from provisioner.verify import security
from provisioner.verify.kube import CheckFailed
from provisioner.verify.lab import Lab


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = State(tmp_path_factory.mktemp("pki") / "state")
    pki.ensure(spec.load(paths.default_spec()), state)
    return state.pki_dir


def _issuer(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).issuer.rfc4514_string()


def test_etcd_certificates_come_from_etcd_s_own_ca_and_nothing_else_does(pki_dir: Path) -> None:
    etcd_ca = x509.load_pem_x509_certificate((pki_dir / "etcd-ca.crt").read_bytes()).subject.rfc4514_string()
    cluster_ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes()).subject.rfc4514_string()
    assert etcd_ca != cluster_ca
    for name in ("etcd-server", "etcd-peer", "apiserver-etcd-client"):
        assert _issuer(pki_dir / f"{name}.crt") == etcd_ca, name
    etcd_signed = {"etcd-server", "etcd-peer", "apiserver-etcd-client"}
    others = [p for p in pki_dir.glob("*.crt") if p.stem not in {"ca", "etcd-ca", *etcd_signed}]
    assert others and all(_issuer(p) == cluster_ca for p in others), [p.name for p in others]


def _serve(pki_dir: Path) -> tuple[int, threading.Thread]:
    """A TLS server as etcd is: its server certificate, client certificates from etcd's CA only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki_dir / "etcd-server.crt", pki_dir / "etcd-server.key")
    ctx.load_verify_locations(pki_dir / "etcd-ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            for _ in range(2):  # the worker's attempt, then the control's
                conn, _ = listener.accept()
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(4096)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


@pytest.fixture
def tried(pki_dir: Path) -> Iterator[dict[str, str]]:
    client_port, t1 = _serve(pki_dir)
    peer_port, t2 = _serve(pki_dir)
    worker = (pki_dir / "kubelet-worker-1.crt", pki_dir / "kubelet-worker-1.key")
    job = {
        "worker": {"cert": worker[0].read_text(), "key": worker[1].read_text()},
        "ports": {"client": client_port, "peer": peer_port},
        "address": "127.0.0.1",
        "controls": {
            "client": [str(pki_dir / "apiserver-etcd-client.crt"), str(pki_dir / "apiserver-etcd-client.key")],
            "peer": [str(pki_dir / "etcd-peer.crt"), str(pki_dir / "etcd-peer.key")],
        },
    }
    done = subprocess.run(
        [sys.executable, "-c", security._TRY_IDENTITIES],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    yield json.loads(done.stdout)
    t1.join(10)
    t2.join(10)


def test_the_probe_sees_the_worker_refused_and_etcd_s_own_certificates_accepted(tried: dict[str, str]) -> None:
    assert tried["client worker"].startswith("refused") and tried["peer worker"].startswith("refused"), tried
    assert tried["client control"] == tried["peer control"] == "accepted: HTTP/1.1 200 OK", tried
    detail = security.judge_etcd_refusals(
        "worker-1", tried, {"client": "ConnectionRefusedError", "peer": "TimeoutError"}
    )
    assert "worker-1's kubelet certificate refused" in detail


@pytest.mark.parametrize(
    "broken, expected",
    [
        ({"client worker": "accepted: HTTP/1.1 200 OK"}, "etcd's client port accepted worker-1's kubelet certificate"),
        ({"peer control": "refused: closed"}, "etcd's own peer certificate was not accepted either"),
    ],
)
def test_a_promise_broken_is_reported(tried: dict[str, str], broken: dict[str, str], expected: str) -> None:
    with pytest.raises(CheckFailed) as failed:
        security.judge_etcd_refusals("worker-1", {**tried, **broken}, {"client": "x", "peer": "x"})
    assert expected in str(failed.value)


def test_a_worker_that_reaches_etcd_s_port_is_reported(tried: dict[str, str]) -> None:
    with pytest.raises(CheckFailed) as failed:
        security.judge_etcd_refusals("worker-1", tried, {"client": "ConnectionRefusedError", "peer": "connected"})
    assert "worker-1 connects to etcd's peer port" in str(failed.value)


def test_members_of_several_may_be_reached_but_still_refuse_the_worker(tried: dict[str, str]) -> None:
    """With several masters etcd serves the node network: a connection is expected, the refusal is the promise."""
    reached = {"client": "connected", "peer": "connected"}
    assert "refused" in security.judge_etcd_refusals("worker-1", tried, reached, exposed=True)
    with pytest.raises(CheckFailed):
        security.judge_etcd_refusals(
            "worker-1", {**tried, "peer worker": "accepted: HTTP/1.1 200 OK"}, reached, exposed=True
        )


def test_anonymous_requests_refused_everywhere_pass_and_any_other_answer_fails() -> None:
    urls = ["https://192.168.56.10:6443/version", "https://192.168.56.11:10250/pods"]
    assert "401 from all 2" in security.judge_anonymous(dict.fromkeys(urls, 401))
    for answer in (200, 403, "URLError: timed out"):
        with pytest.raises(CheckFailed) as allowed:
            security.judge_anonymous({urls[0]: 401, urls[1]: answer})
        assert f"{urls[1]} -> {answer}" in str(allowed.value)


def test_the_privileged_probe_pod_differs_from_the_plain_one_only_in_privilege() -> None:
    image = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
    plain = security.probe_pod("p", image, privileged=False)
    privileged = security.probe_pod("p", image, privileged=True)
    assert "securityContext" not in plain["spec"]["containers"][0]
    assert privileged["spec"]["containers"][0]["securityContext"] == {"privileged": True}
    privileged["spec"]["containers"][0].pop("securityContext")
    assert privileged == plain


def test_the_anonymous_probe_reads_the_status_a_request_without_credentials_gets() -> None:
    """Through the one probe script, against a loopback server: 401 and 200 are told apart, a refusal is named."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401 if self.path == "/secrets" else 200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert security._anonymous_status([], f"{base}/secrets") == 401
        assert security._anonymous_status([], f"{base}/version") == 200
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert "Connection refused" in str(security._anonymous_status([], f"http://127.0.0.1:{closed}/"))


# Recorded from etcdctl v3.6: a and b stored under key1, c under key2, default/plain not encrypted.
ETCDCTL_SECRETS = Path(__file__).parent / "data" / "etcdctl-secrets.json"


def _encryption_pki(tmp_path: Path) -> Path:
    pki_dir = tmp_path / "encryption-pki"
    pki_dir.mkdir()
    encryption.ensure_config(pki_dir)
    return pki_dir


# --- secrets-current-key: every Secret under the config's first key ------------------------------------


def test_secrets_current_key_passes_when_every_secret_is_under_the_first_key() -> None:
    detail = security.judge_current_key("secretbox:key1", {"default/a": "secretbox:key1", "x/y": "secretbox:key1"})
    assert detail == "all 2 Secret(s) in etcd are stored under secretbox:key1, the config's first key"


def test_secrets_current_key_names_the_secrets_under_another_key_or_in_plain_text() -> None:
    stored = encryption.stored_under(ETCDCTL_SECRETS.read_bytes())
    with pytest.raises(CheckFailed) as failed:
        security.judge_current_key("secretbox:key2", stored)
    assert str(failed.value) == (
        "3 of 4 Secret(s) in etcd are not under the config's first key secretbox:key2: plain text: default/plain; "
        "secretbox:key1: default/a, kube-system/b; `provisioner secrets rotate-key` writes every Secret again"
    )


@dataclass(frozen=True)
class MasterFiles(Ssh):
    """The master's answers to the check's two commands: its encryption config and the etcd listing."""

    config: bytes = b""

    def run(self, node: str, script: str, check: bool = True, timeout: float = 60, input: bytes | None = None) -> Any:
        if script == f"cat {layout.ENCRYPTION_CONFIG}":
            return subprocess.CompletedProcess([script], 0, self.config, b"")
        assert script == encryption.etcdctl_get(encryption.SECRETS_PREFIX, prefix=True)
        return subprocess.CompletedProcess([script], 0, ETCDCTL_SECRETS.read_bytes(), b"")


def test_secrets_current_key_reads_the_first_key_from_the_master_s_own_file(tmp_path: Path) -> None:
    """After someone puts a new first key into the master's file and never rewrites: a and b are under key1."""
    pki_dir = _encryption_pki(tmp_path)
    doc = encryption.read_config(pki_dir)
    keys = doc["resources"][0]["providers"][0]["secretbox"]["keys"]
    encryption.write_config(pki_dir, encryption.with_secretbox_keys(doc, [{"name": "key2", "secret": "eA=="}, *keys]))
    master = HostConnection("master", "master", "192.168.56.10", "127.0.0.1", 22, "root", Path("/k"))
    ssh = MasterFiles({"master": master}, config=encryption.config_path(pki_dir).read_bytes())
    lab = Lab(spec.load(paths.default_spec()), None, ssh, [], "agnhost")  # type: ignore[arg-type]
    with pytest.raises(CheckFailed) as failed:
        security.check_secrets_current_key(lab)
    assert (
        "not under the config's first key secretbox:key2: plain text: default/plain; secretbox:key1: default/a"
        in str(failed.value)
    )
    assert "secrets-current-key" in [c.id for c in security.GROUP]
