"""verify's report and plumbing, without a cluster: rows, files, selection, host modules, certificate checks."""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import clusters
import pytest
import yaml
from typer.testing import CliRunner

from provisioner import layout, paths, pki, spec
from provisioner.cli.drift import app as drift_app
from provisioner.cli.verify import app as verify_app
from provisioner.cli.verify import table
from provisioner.errors import ProvisionerError
from provisioner.state import State
from provisioner.verify import certs, check_ids, clusterchecks, hostchecks, selected, selfheal
from provisioner.verify.cluster import judge_stored_secret
from provisioner.verify.kube import CheckFailed, NotYet, wait_for
from provisioner.verify.lab import agnhost_deployment, node_ready
from provisioner.verify.report import FAILED, PASSED, SKIPPED, CheckResult, VerifyReport, from_junit


@pytest.fixture
def cluster() -> spec.Cluster:
    return spec.load(paths.default_spec())


def sample() -> VerifyReport:
    report = VerifyReport("lab")
    report.results = [
        CheckResult("nodes-ready", "every worker Ready", PASSED, 1.25, "worker-1, worker-2 Ready", "nodes-ready"),
        CheckResult(
            "master: service etcd @master",
            "systemd unit etcd is active and enabled",
            FAILED,
            0.5,
            "etcd is not active",
            "master",
        ),
        CheckResult("worker-shutdown", "a worker shut down ...", SKIPPED, 0.0, "static hosts", "worker-shutdown"),
    ]
    return report


def test_rows_carry_check_expectation_result_and_duration() -> None:
    report = sample()
    assert report.rows()[1] == (
        "master: service etcd @master",
        "systemd unit etcd is active and enabled",
        "failed: etcd is not active",
        "0.5s",
    )
    assert not report.ok and [r.check for r in report.failed] == ["master: service etcd @master"]
    assert report.counts() == {PASSED: 1, FAILED: 1, SKIPPED: 1}


def test_json_report_lists_every_check(tmp_path: Path) -> None:
    path = sample().write(tmp_path / "r" / "verify.json")
    data = json.loads(path.read_text())
    assert data["ok"] is False and data["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert [r["check"] for r in data["results"]] == [r.check for r in sample().results]
    assert data["results"][0]["seconds"] == 1.25


def test_junit_report_round_trips(tmp_path: Path) -> None:
    path = sample().write(tmp_path / "verify.xml")
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "1"
    rows = from_junit(path.read_text())
    assert [(r.check, r.result, r.detail) for r in rows] == [
        ("nodes-ready", PASSED, ""),
        ("master: service etcd @master", FAILED, "etcd is not active"),
        ("worker-shutdown", SKIPPED, "static hosts"),
    ]
    assert rows[1].expectation == "systemd unit etcd is active and enabled"


def test_table_has_the_four_columns() -> None:
    t = table(sample())
    assert [c.header for c in t.columns] == ["check", "expectation", "result", "duration"]
    assert t.row_count == 3


def test_selection_by_id_pattern_and_group() -> None:
    assert selected(None) == check_ids()
    assert selected(["dns"]) == ["dns"]
    assert selected(["kill-*"]) == [
        f"kill-{u}"
        for u in (
            "kube-apiserver",
            "kube-scheduler",
            "kube-controller-manager",
            "etcd",
            "kubelet",
            "containerd",
            "kube-proxy",
        )
    ]
    assert selected(["hosts"]) == ["master", "worker", "common"]
    assert "worker-shutdown" in selected(["self-healing"])
    with pytest.raises(ProvisionerError) as err:
        selected(["dsn"])
    assert "dsn" in err.value.message() and "dns" in err.value.message()


def test_wait_for_says_what_it_waited_for() -> None:
    calls = []

    def probe() -> str:
        calls.append(1)
        raise NotYet(f"seen {len(calls)}")

    with pytest.raises(CheckFailed) as err:
        wait_for("the moon to turn blue", probe, timeout=0.3, interval=0.1)
    assert "the moon to turn blue" in str(err.value) and f"seen {len(calls)}" in str(err.value)


# --- the testinfra modules, run for real against this machine through a local-connection inventory ---------


@pytest.fixture(scope="module")
def local_host_rows(tmp_path_factory: pytest.TempPathFactory) -> list[CheckResult]:
    """The host modules run against this machine: it is no cluster node, so most checks must fail."""
    tmp = tmp_path_factory.mktemp("hosts")
    inv = tmp / "hosts.yml"
    local = {"ansible_connection": "local"}
    inv.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "k8s_cluster": {
                            "children": {
                                "masters": {"hosts": {"master": dict(local)}},
                                "workers": {"hosts": {"worker-1": dict(local)}},
                            }
                        }
                    }
                }
            }
        )
    )
    facts = tmp / "facts.json"
    cluster = spec.load(paths.default_spec())
    data = hostchecks.facts(cluster)
    # Point the served-certificate checks at loopback, where nothing listens.
    data["nodes"] = {
        "master": {"role": "master", "address": "127.0.0.1"},
        "worker-1": {"role": "worker", "address": "127.0.0.1"},
    }
    for served in data["served"]["master"].values():
        served["address"] = "127.0.0.1"
    facts.write_text(json.dumps(data))
    junit = tmp / "junit.xml"
    env = dict(
        os.environ,
        PROVISIONER_VERIFY_FACTS=str(facts),
        PYTHONDONTWRITEBYTECODE="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    cmd = hostchecks.pytest_command(inv, junit, list(hostchecks.MODULES))
    subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False, cwd=tmp)
    return from_junit(junit.read_text(), {Path(m).stem: g for g, m in hostchecks.MODULES.items()})


def test_host_modules_give_one_named_row_per_check_and_host(local_host_rows: list[CheckResult]) -> None:
    checks = {r.check for r in local_host_rows}
    assert "master: service etcd @master" in checks
    assert "worker: service kubelet @worker-1" in checks
    assert "common: swap off @master" in checks and "common: swap off @worker-1" in checks
    assert {r.group for r in local_host_rows} == {"master", "worker", "common"}
    assert all(r.expectation for r in local_host_rows)
    assert next(r for r in local_host_rows if r.check == "master: service etcd @master").expectation == (
        "systemd unit etcd is active and enabled"
    )


def test_host_modules_fail_where_this_machine_breaks_the_promise(local_host_rows: list[CheckResult]) -> None:
    by_check = {r.check: r for r in local_host_rows}
    # This machine runs no etcd and no kubelet, serves no certificates and keeps no secrets in /etc/kubernetes.
    for check in (
        "master: service etcd @master",
        "worker: service kubelet @worker-1",
        "master: served certificate apiserver @master",
        "common: secrets private @master",
    ):
        assert by_check[check].result == FAILED, check
        assert by_check[check].detail
    assert "etcd is not active" in by_check["master: service etcd @master"].detail
    # ...and holds no container engine binary, so the master's promise holds here.
    assert by_check["master: no container engine runc @master"].result == PASSED


# --- certificate checks against certificates the project's own PKI issues ---------------------------------


@pytest.fixture
def issued(cluster: spec.Cluster, tmp_path: Path) -> State:
    state = State(tmp_path)
    pki.ensure(cluster, state)
    return state


def test_expected_names_come_from_the_pki_plan(cluster: spec.Cluster, issued: State) -> None:
    cert = certs.read_pem((issued.pki_dir / "apiserver.crt").read_bytes())[0]
    wanted = hostchecks.facts(cluster)["certs"]["apiserver"]
    assert certs.missing_names(cert, wanted["dns"], wanted["ips"]) == []
    assert certs.missing_names(cert, ["kubernetes.default.svc", "other.example"], ["10.96.0.1", "10.0.0.9"]) == [
        "other.example",
        "10.0.0.9",
    ]


@pytest.mark.parametrize("which", ["default", "ha"])
def test_each_master_s_served_certificates_are_looked_for_where_they_are_served(which: str, tmp_path: Path) -> None:
    """The certificate a master serves on each port is the one pki issued for it, naming that address."""
    cluster = getattr(clusters, which)()
    state = State(tmp_path)
    pki.ensure(cluster, state)
    facts = hostchecks.facts(cluster)
    lone = len(cluster.masters) == 1
    assert set(facts["served"]) == {m.name for m in cluster.masters}
    for master in cluster.masters:
        served = facts["served"][master.name]
        assert served["apiserver"] == {"cert": "apiserver", "address": str(master.address), "port": 6443}
        etcd_address = "127.0.0.1" if lone else str(master.address)
        for name, port in (("etcd-server", 2379), ("etcd-peer", 2380)):
            assert (served[name]["address"], served[name]["port"]) == (etcd_address, port)
            cert = certs.read_pem((state.pki_dir / f"{served[name]['cert']}.crt").read_bytes())[0]
            wanted = facts["certs"][served[name]["cert"]]
            assert certs.missing_names(cert, wanted["dns"], [*wanted["ips"], etcd_address]) == []
            assert str(master.address) in wanted["ips"]


def test_validity_window(issued: State) -> None:
    cert = certs.read_pem((issued.pki_dir / "apiserver.crt").read_bytes())[0]
    now = datetime.datetime.now(datetime.UTC)
    month = datetime.timedelta(days=30)
    assert certs.validity_problems("apiserver.crt", cert, now, month) == []
    late = cert.not_after - datetime.timedelta(days=10)
    said = certs.validity_problems("apiserver.crt", cert, late, month)[0]
    assert "expires in 10 d, less than spec.pki.renewBefore (30 d)" in said and "certs renew" in said
    # The margin is the spec's: ten days left passes a cluster that renews a day before the end.
    assert certs.validity_problems("apiserver.crt", cert, late, datetime.timedelta(days=1)) == []
    after = cert.not_after + datetime.timedelta(days=1)
    assert "expired at" in certs.validity_problems("apiserver.crt", cert, after, month)[0]


def test_kubeconfig_certificates_are_found(issued: State) -> None:
    text = next((issued.pki_dir / "kubeconfigs").glob("admin.kubeconfig")).read_text()
    found = certs.kubeconfig_certs(text)
    assert len(found) == 2 and any("kubernetes-admin" in c.subject for c in found)


@pytest.fixture
def tls_server(issued: State) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.pki_dir / "apiserver.crt", issued.pki_dir / "apiserver.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()


def test_served_certificate_is_read_from_the_endpoint(tls_server: int) -> None:
    served = certs.served_certificate("127.0.0.1", tls_server)
    assert "kubernetes.default.svc.cluster.local" in served.dns and "10.96.0.1" in served.ips


def test_drift_command_exits_2_on_a_missing_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(drift_app, ["--manifests", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "nope: is not a folder" in result.output


def test_verify_command_refuses_an_unknown_check() -> None:
    result = CliRunner().invoke(verify_app, ["--only", "dsn"])
    assert result.exit_code != 0 and "--only dsn: names no check" in result.output


# --- the catalogue of cluster checks and the workloads they create ----------------------------------------


def test_every_daemon_the_playbooks_install_has_a_kill_check() -> None:
    """From the layout's units (what site.yml installs), not from the lists the checks are made from."""
    ids = [c.id for c in clusterchecks.CHECKS]
    assert len(ids) == len(set(ids))
    daemons = [u.name for u in layout.UNITS if u.binary]
    assert len(daemons) == 7
    missing = [d for d in daemons if f"kill-{d}" not in ids]
    assert not missing, f"no kill check for {missing}"
    # and each is killed on a node of a role that runs it
    for d in daemons:
        on = "master" if d in selfheal.MASTER_DAEMONS else "worker"
        assert on in layout.unit(d).roles, f"kill-{d} runs on a {on}, which has no {d}"
    # Destructive checks run last: a worker powered off, then the masters' machines (rows only HA runs).
    assert ids[-3:] == ["worker-shutdown", "master-loss", "etcd-quorum"] and ids.index("nodes-ready") == 0
    assert all(c.expectation for c in clusterchecks.CHECKS)


def test_test_workloads_never_pull_and_leave_a_dead_node_in_seconds() -> None:
    image = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
    d = agnhost_deployment("resched", image, 2, spread=True, toleration_seconds=10)
    pod = d["spec"]["template"]["spec"]
    assert [c["imagePullPolicy"] for c in pod["containers"]] == ["Never"]
    assert {(t["key"], t["tolerationSeconds"]) for t in pod["tolerations"]} == {
        ("node.kubernetes.io/unreachable", 10),
        ("node.kubernetes.io/not-ready", 10),
    }
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert d["spec"]["selector"]["matchLabels"] == d["spec"]["template"]["metadata"]["labels"] == {"app": "resched"}


def test_a_node_is_ready_only_while_its_ready_condition_says_true() -> None:
    pressure = {"type": "MemoryPressure", "status": "False"}
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
    gone = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}
    assert node_ready({"status": {"conditions": [pressure, ready]}}) == (True, ready)
    assert node_ready({"status": {"conditions": [pressure, gone]}}) == (False, gone)
    # A node the kubelet has just registered reports no conditions yet.
    assert node_ready({"status": {"conditions": [pressure]}}) == (False, {})
    assert node_ready({"status": {}}) == (False, {})


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"", "not found in etcd"),
        (b"k8s\x00\n\x0cv1\x12\x06Secret verify-plaintext-42", "stored in plain text"),
        (b"k8s\x00\n\x0cv1\x12\x06Secret value=opaque", "is not encrypted"),
    ],
)
def test_a_secret_stored_in_the_clear_fails_the_check(raw: bytes, problem: str) -> None:
    with pytest.raises(CheckFailed) as err:
        judge_stored_secret("/registry/secrets/ns/probe", raw, "verify-plaintext-42")
    assert problem in str(err.value)


def test_an_encrypted_secret_passes_and_names_the_provider() -> None:
    raw = b"k8s:enc:secretbox:v1:key1:\x8f\x02\x11..."
    detail = judge_stored_secret("/registry/secrets/ns/probe", raw, "verify-plaintext-42")
    assert "k8s:enc:secretbox:v1" in detail
    with pytest.raises(CheckFailed) as weaker:
        judge_stored_secret("/registry/secrets/ns/probe", b"k8s:enc:aescbc:v1:key1:\x8f", "x")
    assert "not secretbox" in str(weaker.value)


def test_a_not_ready_apiserver_is_reported_by_its_failing_checks() -> None:
    # Recorded from the lab while etcd was starting under emulation.
    answer = (
        'Error from server (InternalError): an error on the server ("[+]ping ok\\n[+]log ok\\n[+]etcd ok\\n'
        '[-]etcd-readiness failed: reason withheld\\n[+]informer-sync ok\\n[+]shutdown ok\\nreadyz check failed") '
        "has prevented the request from succeeding"
    )
    assert selfheal._failing_checks(answer) == "etcd-readiness failed: reason withheld"
    assert selfheal._failing_checks("Unable to connect to the server: EOF\n") == (
        "Unable to connect to the server: EOF"
    )
