"""The Secret key rotation against a real etcd and kube-apiserver from the artifact set, no VM.

The apiserver runs on this machine's loopback with the project's PKI and, as on the master,
--encryption-provider-config-automatic-reload. The rotation is encryption.rotate with LiveCluster's own
commands (the master's metrics script, etcdctl, kubectl replace); those meant for the master run here
(LocalShell), and the push writes the PKI directory's file where the apiserver reads it, 0600, as the
certs role installs it. Each push waits for the apiserver's once-a-minute poll: a few minutes in all.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_verify_apiserver import LocalShell, _free_port, _local_kubeconfig, _start

from provisioner import encryption, layout, pki, spec
from provisioner.artifacts.layout import ArtifactSet
from provisioner.events import EventBus, Recorder
from provisioner.files import write_atomic
from provisioner.hosts import HostConnection, NodeCommandError
from provisioner.kube import Kubectl
from provisioner.paths import default_spec
from provisioner.state import State
from provisioner.verify import security
from provisioner.verify.kube import CheckFailed, wait_for

pytestmark = pytest.mark.build

SECRETS = ["default/app", "default/db", "kube-system/token", "team-a/api", "team-a/tls"]


@dataclass(frozen=True)
class MasterShell(LocalShell):
    """The master's commands here; its admin kubeconfig is the test's (the apiserver on loopback)."""

    admin_conf: Path = Path()

    def command(self, node: str, script: str) -> list[str]:
        return super().command(node, script.replace(layout.ADMIN_CONF, str(self.admin_conf)))


class LoopbackCluster(encryption.LiveCluster):
    def __init__(self, kubectl: Kubectl, ssh: MasterShell, source: Path, target: Path) -> None:
        self.kubectl, self.ssh, self.etcd_host = kubectl, ssh, "master"
        self.source, self.target = source, target

    def push(self) -> None:
        write_atomic(self.target, self.source.read_bytes(), 0o600)


@dataclass
class Loopback:
    remote: LoopbackCluster
    kubectl: Kubectl
    pki_dir: Path
    installed: Path


@pytest.fixture(scope="module")
def loopback(built: ArtifactSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    tmp_path = tmp_path_factory.mktemp("rotate")
    cluster = spec.load(default_spec())
    state = State(tmp_path / "state")
    pki.ensure(cluster, state)
    p = state.pki_dir
    installed = tmp_path / "master" / "encryption-config.yaml"
    installed.parent.mkdir()
    write_atomic(installed, encryption.config_path(p).read_bytes(), 0o600)
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    etcd = _start(
        [
            str(built.bin / "etcd"),
            f"--data-dir={tmp_path / 'etcd'}",
            f"--listen-client-urls=https://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=https://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            f"--cert-file={p / 'etcd-server.crt'}",
            f"--key-file={p / 'etcd-server.key'}",
            "--client-cert-auth=true",
            f"--trusted-ca-file={p / 'etcd-ca.crt'}",
        ],
        tmp_path / "etcd.log",
    )
    apiserver = _start(
        [
            str(built.bin / "kube-apiserver"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--secure-port={api_port}",
            "--anonymous-auth=false",
            "--authorization-mode=RBAC",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--etcd-servers=https://127.0.0.1:{etcd_port}",
            f"--etcd-cafile={p / 'etcd-ca.crt'}",
            f"--etcd-certfile={p / 'apiserver-etcd-client.crt'}",
            f"--etcd-keyfile={p / 'apiserver-etcd-client.key'}",
            f"--encryption-provider-config={installed}",
            "--encryption-provider-config-automatic-reload=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/12",
        ],
        tmp_path / "apiserver.log",
    )
    # Break-glass credential: this apiserver has no RBAC bindings for the daily admin.
    kubeconfig = _local_kubeconfig(p / "kubeconfigs" / "super-admin-local.kubeconfig", tmp_path, api_port)
    kubectl = Kubectl(built.bin / "kubectl", kubeconfig)
    try:

        def ready() -> None:
            if etcd.poll() is not None or apiserver.poll() is not None:
                raise CheckFailed(f"etcd or kube-apiserver exited; logs in {tmp_path}")
            kubectl.run("get", "--raw=/readyz", timeout=20)

        wait_for("the loopback kube-apiserver to answer /readyz", ready, 180)
        master = HostConnection("master", "master", "127.0.0.1", "127.0.0.1", 22, "root", Path("/nonexistent"))
        shell = MasterShell(
            {"master": master}, pki_dir=p, bin_dir=built.bin, etcd_port=etcd_port, admin_conf=kubeconfig
        )
        remote = LoopbackCluster(kubectl, shell, encryption.config_path(p), installed)
        yield Loopback(remote, kubectl, p, installed)
    finally:
        for proc in (apiserver, etcd):
            proc.terminate()
            proc.wait(timeout=30)


def _stored(lab: Loopback) -> dict[str, str]:
    return encryption.stored_under(lab.remote.etcd(encryption.SECRETS_PREFIX, prefix=True))


def test_every_secret_ends_under_the_new_key_and_reads_back(loopback: Loopback) -> None:
    kubectl = loopback.kubectl
    kubectl.run("create", "namespace", "team-a")
    for name in SECRETS:
        namespace, short = name.split("/")
        kubectl.run("create", "secret", "generic", short, f"--namespace={namespace}", f"--from-literal=value={name}")
    before = _stored(loopback)
    assert set(SECRETS) <= set(before) and set(before.values()) == {"secretbox:key1"}
    assert "stored under secretbox:key1" in security.judge_current_key("secretbox:key1", before)

    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    started = time.monotonic()
    planned = encryption.plan(loopback.pki_dir, ["master"])
    result = encryption.rotate(planned, loopback.pki_dir, loopback.remote, bus, interval=3)
    seconds = time.monotonic() - started
    print(
        f"rotation {result.old} -> {result.new} in {seconds:.0f}s: "
        + ", ".join(f"{s.name} {s.seconds:.0f}s" for s in result.steps)
    )

    assert (result.old, result.new) == ("key1", "key2")
    assert result.rewritten >= len(SECRETS)
    names = encryption.key_names(yaml.safe_load(loopback.installed.read_bytes()), "installed")
    assert names == ["key2"] and not encryption.record_path(loopback.pki_dir).exists()
    after = _stored(loopback)
    assert set(after.values()) == {"secretbox:key2"}, after
    assert f"{encryption.PROBE_NAMESPACE}/{encryption.PROBE_NAME}" not in after
    assert "stored under secretbox:key2" in security.judge_current_key("secretbox:key2", after)
    with pytest.raises(CheckFailed):
        security.judge_current_key("secretbox:key1", after)
    for name in SECRETS:
        namespace, short = name.split("/")
        value = kubectl.run("get", "secret", short, f"--namespace={namespace}", "-o", "jsonpath={.data.value}").stdout
        assert base64.b64decode(value).decode() == name
    # The apiserver runs the file it was given: the metric names the installed file's hash.
    assert encryption.runs_config(
        encryption.loaded_hashes(loopback.remote.metrics("master")), loopback.installed.read_bytes()
    )
    shown = "\n".join(repr(e) for e in recorder.events)
    assert "rewrite secrets" in shown and "Secret(s) written again" in shown


def test_metrics_script_fails_loudly_when_the_apiserver_does_not_answer(loopback: Loopback) -> None:
    broken = MasterShell(
        loopback.remote.ssh.nodes,
        pki_dir=loopback.remote.ssh.pki_dir,
        bin_dir=loopback.remote.ssh.bin_dir,
        etcd_port=loopback.remote.ssh.etcd_port,
        admin_conf=Path("/nonexistent/kubeconfig"),
    )
    remote = LoopbackCluster(loopback.kubectl, broken, loopback.remote.source, loopback.remote.target)
    with pytest.raises(NodeCommandError) as failed:
        remote.metrics("master")
    assert "get --raw /metrics" in failed.value.what
