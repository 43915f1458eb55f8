"""verify's API-side checks and `drift` against a real etcd and kube-apiserver from the artifact set.

No VM: etcd and the apiserver run on this machine's loopback with the project's own PKI (the default lab's
certificates name 127.0.0.1), so the checks that need no worker run for real: the Deployment under its
/registry key, the Secret encrypted at rest, drift after `kubectl scale`, and cleanup of what each created.
Commands the checks send to the master over SSH run here instead, against the same etcd.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest
import yaml

from provisioner import layout, paths, pki, spec
from provisioner.artifacts import build
from provisioner.artifacts.layout import ArtifactSet
from provisioner.events import EventBus
from provisioner.hosts import HostConnection
from provisioner.kube import Kubectl, KubectlError
from provisioner.layout import DIRS, PORTS
from provisioner.paths import cache_root, default_spec
from provisioner.state import State
from provisioner.verify import cluster as checks
from provisioner.verify.kube import CheckFailed, NotYet, Ssh, wait_for
from provisioner.verify.lab import Lab, check_cleanup

pytestmark = pytest.mark.build


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalShell(Ssh):
    """Runs the master's commands on this machine, against the loopback etcd and the test's PKI."""

    pki_dir: Path = Path()
    bin_dir: Path = Path()
    etcd_port: int = PORTS["etcd_client"]

    def command(self, node: str, script: str) -> list[str]:
        script = script.replace(DIRS.pki, str(self.pki_dir))
        script = script.replace(f"127.0.0.1:{PORTS['etcd_client']}", f"127.0.0.1:{self.etcd_port}")
        return ["sh", "-c", f"PATH={self.bin_dir}:$PATH; {script}"]


@dataclass
class ControlPlane:
    lab: Lab
    kubectl: Kubectl
    etcd_port: int


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cluster = spec.load(default_spec())
    version = cluster.spec.kubernetes.version
    aset = ArtifactSet(cache_root() / "artifacts" / version, version)
    build.build(aset, EventBus())
    tmp = tmp_path_factory.mktemp("apiserver")
    state = State(tmp / "state")
    pki.ensure(cluster, state)
    p = state.pki_dir
    etcd_port, peer_port, api_port, cm_port = _free_port(), _free_port(), _free_port(), _free_port()
    etcd = _start(
        [
            str(aset.bin / "etcd"),
            f"--data-dir={tmp / 'etcd'}",
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
        tmp / "etcd.log",
    )
    apiserver = _start(
        [
            str(aset.bin / "kube-apiserver"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The kubernetes Service endpoint may not be a loopback address; nothing here needs it.
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
            f"--encryption-provider-config={p / 'encryption-config.yaml'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/12",
        ],
        tmp / "apiserver.log",
    )
    kubeconfig_file = _local_kubeconfig(p / "kubeconfigs" / "admin-local.kubeconfig", tmp, api_port)
    cm_kubeconfig = _local_kubeconfig(p / "kubeconfigs" / "controller-manager.kubeconfig", tmp, api_port)
    kubectl = Kubectl(aset.bin / "kubectl", kubeconfig_file)
    controller_manager: subprocess.Popen[bytes] | None = None
    try:

        def ready() -> None:
            if etcd.poll() is not None or apiserver.poll() is not None:
                raise CheckFailed(f"etcd or kube-apiserver exited; logs in {tmp}")
            kubectl.run("get", "--raw=/readyz", timeout=20)

        wait_for("the loopback kube-apiserver to answer /readyz", ready, 180)
        # As the addons phase does: the rbac role's bindings, applied with the break-glass credential, are
        # what gives the daily admin credential its rights.
        super_admin = _local_kubeconfig(p / "kubeconfigs" / "super-admin-local.kubeconfig", tmp, api_port)
        rbac = (paths.REPO_ROOT / "playbooks" / "roles" / "rbac" / "templates" / "rbac.yaml.j2").read_text()
        manifest = jinja2.Template(rbac).render(layout=layout.group_vars(), ansible_managed="test")
        Kubectl(aset.bin / "kubectl", super_admin).run("apply", "-f", "-", input=manifest)
        # The namespace controller finishes namespace deletion: without it no check could clean up.
        controller_manager = _start(
            [
                str(aset.bin / "kube-controller-manager"),
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--leader-elect=false",
                # As on the lab's master: each controller acts with its own service account's rights.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                "--controllers=namespace,deployment,replicaset,garbagecollector,serviceaccount",
            ],
            tmp / "controller-manager.log",
        )

        def cm_healthy() -> None:
            assert controller_manager is not None
            if controller_manager.poll() is not None:
                raise CheckFailed(f"kube-controller-manager exited; log in {tmp}")
            context = ssl._create_unverified_context()
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{cm_port}/healthz", context=context, timeout=5) as r:
                    r.read()
            except OSError as exc:
                raise NotYet(str(exc)) from None

        wait_for("the loopback kube-controller-manager to answer /healthz", cm_healthy, 120)
        master = HostConnection("master", "master", "127.0.0.1", "127.0.0.1", 22, "root", Path("/nonexistent"))
        shell = LocalShell({"master": master}, pki_dir=p, bin_dir=aset.bin, etcd_port=etcd_port)
        image = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
        yield ControlPlane(Lab(cluster, kubectl, shell, [], image), kubectl, etcd_port)
    finally:
        for proc in (controller_manager, apiserver, etcd):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _local_kubeconfig(source: Path, tmp: Path, port: int) -> Path:
    data = yaml.safe_load(source.read_text())
    data["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    target = tmp / source.name
    target.write_text(yaml.safe_dump(data))
    return target


def _namespaces(kubectl: Kubectl) -> set[str]:
    return {n["metadata"]["name"] for n in kubectl.json("get", "namespaces")["items"]}


def test_deployment_from_a_file_is_found_under_its_registry_key(control_plane: ControlPlane) -> None:
    started = time.monotonic()
    detail = checks.check_etcd_desired_state(control_plane.lab)
    print(f"etcd-desired-state: {detail} ({time.monotonic() - started:.1f}s)")
    assert detail.startswith("/registry/deployments/verify-etcd-") and "present in etcd" in detail
    assert not control_plane.lab.cleanup_problems


def test_secret_is_encrypted_at_rest(control_plane: ControlPlane) -> None:
    detail = checks.check_secret_encrypted(control_plane.lab)
    assert "stored as k8s:enc:secretbox:v1" in detail


def test_drift_check_passes_and_cleans_up(control_plane: ControlPlane) -> None:
    before = _namespaces(control_plane.kubectl)
    detail = checks.check_drift(control_plane.lab)
    print(f"drift: {detail}")
    assert "spec.replicas: 1 (file) → 2 (live)" in detail
    asked = set(control_plane.lab.deleting)
    assert asked, "the check's namespace deletion was asked for"
    print(f"cleanup: {check_cleanup(control_plane.lab)}")
    after = _namespaces(control_plane.kubectl)
    assert not after & asked
    assert after <= before  # nothing new stays behind (earlier tests' namespaces may be gone by now)
    assert not control_plane.lab.cleanup_problems


def test_an_unencrypted_secret_would_be_caught(control_plane: ControlPlane) -> None:
    """The check must be able to fail: a value written straight into etcd in plain text is reported."""
    lab = control_plane.lab
    key = "/registry/secrets/default/plain"
    lab.ssh.run(
        "master",
        f"{layout.ETCDCTL} put {key} verify-plaintext-0123456789abcdef",
    )
    with pytest.raises(CheckFailed) as err:
        checks.judge_stored_secret(key, checks.etcd_get(lab, key), "verify-plaintext-0123456789abcdef")
    assert "stored in plain text" in str(err.value)


def test_kubectl_errors_name_the_command(control_plane: ControlPlane) -> None:
    with pytest.raises(KubectlError) as err:
        control_plane.kubectl.run("get", "widgets")
    assert "kubectl get widgets" in err.value.message() and "widgets" in err.value.cause
