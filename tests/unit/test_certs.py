"""`provisioner certs`: the node script run here on files laid out as the certs role installs them, and the
admin machine's own, read back with the right subjects, issuers, SANs and time left."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner import certs, paths, pki, spec
from provisioner.state import State


@pytest.fixture
def short_lived(tmp_path: Path) -> tuple[spec.Cluster, State]:
    """The default lab with 2-hour leaves, its PKI made on the 'admin machine' (tmp)."""
    cluster = spec.load(paths.default_spec())
    lifetimes = spec.PkiSpec.model_validate({"leafValidity": "2h", "renewBefore": "30m"})
    cluster = cluster.model_copy(update={"spec": cluster.spec.model_copy(update={"pki": lifetimes})})
    state = State(tmp_path / "state")
    pki.ensure(cluster, state)
    return cluster, state


def _install_like_a_worker(state: State, kube: Path) -> None:
    """What site.yml's "PKI: workers" play puts on worker-1."""
    (kube / "pki").mkdir(parents=True)
    shutil.copy(state.pki_dir / "ca.crt", kube / "pki" / "ca.crt")
    shutil.copy(state.pki_dir / "kubelet-server-worker-1.crt", kube / "pki" / "kubelet.crt")
    shutil.copy(state.pki_dir / "kubelet-server-worker-1.key", kube / "pki" / "kubelet.key")
    shutil.copy(state.pki_dir / "kubeconfigs" / "kubelet-worker-1.kubeconfig", kube / "kubelet.kubeconfig")
    shutil.copy(state.pki_dir / "kubeconfigs" / "kube-proxy.kubeconfig", kube / "kube-proxy.kubeconfig")


def _run_node_script(kube: Path) -> str:
    done = subprocess.run(
        ["bash", "-c", certs.node_script(str(kube))], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


def test_a_node_shows_its_installed_certificates_with_subject_issuer_sans_and_time_left(
    short_lived: tuple[spec.Cluster, State], tmp_path: Path
) -> None:
    _, state = short_lived
    kube = tmp_path / "node" / "etc-kubernetes"
    _install_like_a_worker(state, kube)
    found = certs.parse_node_output("worker-1", _run_node_script(kube))
    assert all(isinstance(f, certs.Found) for f in found), found
    by_file = {f.file: f.cert for f in found if isinstance(f, certs.Found)}
    assert sorted(by_file) == ["kube-proxy.kubeconfig", "kubelet.kubeconfig", "pki/ca.crt", "pki/kubelet.crt"]
    assert by_file["pki/ca.crt"].is_ca and by_file["pki/ca.crt"].name == "lab-ca"
    assert by_file["pki/kubelet.crt"].sans == ("worker-1", "192.168.56.11")
    assert by_file["kubelet.kubeconfig"].name == "system:node:worker-1 (system:nodes)"
    assert by_file["kube-proxy.kubeconfig"].issuer == "lab-ca"
    now = datetime.datetime.now(datetime.UTC)
    for name in ("pki/kubelet.crt", "kubelet.kubeconfig", "kube-proxy.kubeconfig"):
        assert 1.9 / 24 < by_file[name].days_left(now) <= 2 / 24, name  # 2 h leaves, just issued
    assert by_file["pki/ca.crt"].days_left(now) > 3649
    assert {f.file for f in certs.below(found, 30, now)} == {
        "pki/kubelet.crt",
        "kubelet.kubeconfig",
        "kube-proxy.kubeconfig",
    }


def test_a_file_that_is_no_certificate_is_named_not_skipped(tmp_path: Path) -> None:
    kube = tmp_path / "kube"
    (kube / "pki").mkdir(parents=True)
    (kube / "pki" / "broken.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    found = certs.parse_node_output("master", _run_node_script(kube))
    assert len(found) == 1 and isinstance(found[0], certs.Unreadable)
    assert (found[0].where, found[0].file) == ("master", "pki/broken.crt")


def test_a_node_without_a_kubernetes_dir_has_none(tmp_path: Path) -> None:
    assert certs.parse_node_output("worker-9", _run_node_script(tmp_path / "missing")) == []


def test_the_admin_machine_shows_its_pki_and_the_kubeconfigs_clients(short_lived: tuple[spec.Cluster, State]) -> None:
    _, state = short_lived
    shutil.copy(state.pki_dir / "kubeconfigs" / "admin.kubeconfig", state.kubeconfig)
    found = certs.admin_files(state)
    assert all(isinstance(f, certs.Found) and f.where == certs.ADMIN for f in found)
    subjects = {Path(f.file).name: f.cert.name for f in found if isinstance(f, certs.Found)}
    assert subjects["etcd-ca.crt"] == "lab-etcd-ca"
    assert subjects["super-admin.crt"] == "kubernetes-super-admin (system:masters)"
    assert subjects[state.kubeconfig.name] == "kubernetes-admin (provisioner:cluster-admins)"
    assert len(found) == len(list(state.pki_dir.glob("*.crt"))) + 1


@pytest.mark.parametrize(
    ("left", "said"),
    [
        (datetime.timedelta(days=364, hours=23), "365 d"),
        (datetime.timedelta(hours=1, minutes=55, seconds=30), "1 h 55 min"),
        (datetime.timedelta(minutes=4), "4 min"),
        (-datetime.timedelta(hours=2, minutes=1), "expired 2 h 1 min ago"),
    ],
)
def test_time_left_is_said_at_the_scale_that_matters(left: datetime.timedelta, said: str) -> None:
    assert certs.describe_left(left) == said


def test_up_and_status_warn_when_a_certificate_has_fewer_than_90_days(
    short_lived: tuple[spec.Cluster, State], tmp_path: Path
) -> None:
    cluster, state = short_lived
    said = certs.expiry_warning(state)
    leaves = len(pki.cluster_certs(cluster))  # every leaf, none of the CAs
    assert said is not None and said.startswith(f"{leaves} certificate(s) have fewer than 90 days left")
    assert re.search(r": 1 h 5\d min;", said), said  # the first to expire, two hours after its issue
    year = State(tmp_path / "year")
    pki.ensure(spec.load(paths.default_spec()), year)
    assert certs.expiry_warning(year) is None
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
    assert "fewer than 90 days" in (certs.expiry_warning(year, later) or "")
