"""Certificates over time on a real cluster with 2-hour leaves: `certs` shows them as installed, `certs renew
--all` renews every one while a Service keeps answering, and a cluster whose certificates expired while it
was off fails `verify` and is brought back by `certs renew --all`.

Durations and figures are printed (./run-tests --certs runs pytest with -s).
"""

from __future__ import annotations

import datetime
import time

import pytest
import yaml
from certslab import CertsLab
from typer.testing import CliRunner

from provisioner import certs, layout, lifecycle, pki, renewal
from provisioner.artifacts import image_names
from provisioner.cli import app
from provisioner.errors import ProvisionerError
from provisioner.events import EventBus
from provisioner.verify import run
from provisioner.verify.lab import SERVICE_GAP_LIMIT, agnhost_deployment, service, service_and_api_probes
from provisioner.verify.report import FAILED

pytestmark = [pytest.mark.certs]

# A single master: its apiserver restarts once; what the admin machine may go without an answer.
API_OUTAGE_LIMIT = 180.0
SERVICE = "answering"
NAMESPACE = "certs-renew"


def _installed(lab: CertsLab) -> dict[tuple[str, str], certs.CertFacts]:
    found = certs.everywhere(lab.state, lab.ssh(), [n.name for n in lab.cluster.spec.nodes])
    unreadable = [f for f in found if isinstance(f, certs.Unreadable)]
    assert not unreadable, unreadable
    return {(f.where, f.file): f.cert for f in found if isinstance(f, certs.Found)}


def test_two_hour_leaves_show_in_certs_with_the_time_they_have_left(certs_lab: CertsLab) -> None:
    now = datetime.datetime.now(datetime.UTC)
    installed = _installed(certs_lab)
    leaves = {k: c for k, c in installed.items() if not c.is_ca}
    cas = {k: c for k, c in installed.items() if c.is_ca}
    assert {where for where, _ in leaves} == {certs.ADMIN, *(n.name for n in certs_lab.cluster.spec.nodes)}
    for (where, file), cert in leaves.items():
        left = cert.left(now)
        assert datetime.timedelta(minutes=30) < left <= datetime.timedelta(hours=2), (where, file, left)
    assert all(c.days_left(now) > 3000 for c in cas.values()), cas
    done = CliRunner().invoke(app, ["certs", "--spec", str(certs_lab.spec_file)])
    print(f"\n{len(leaves)} leaf and {len(cas)} CA certificates as installed; `certs` said:\n{done.output[-600:]}")
    assert done.exit_code == 0, done.output
    assert "none with fewer than 30 min left" in done.output  # the spec's renewBefore


def test_renew_all_keeps_a_service_answering_and_gives_every_certificate_a_new_end(certs_lab: CertsLab) -> None:
    kubectl = certs_lab.kubectl()
    workload = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {**agnhost_deployment(SERVICE, _agnhost(certs_lab), 2, spread=True), "metadata": _meta(NAMESPACE)},
        {**service(SERVICE, "NodePort"), "metadata": _meta(NAMESPACE)},
    ]
    kubectl.run("apply", "-f", "-", input=yaml.safe_dump_all(workload))
    kubectl.run("-n", NAMESPACE, "rollout", "status", f"deployment/{SERVICE}", "--timeout=300s", timeout=330)
    port = kubectl.json("-n", NAMESPACE, "get", "service", SERVICE)["spec"]["ports"][0]["nodePort"]
    workers = certs_lab.cluster.workers
    before = _installed(certs_lab)

    answering, api = service_and_api_probes(kubectl, certs_lab.first_up.prefix, [str(w.address) for w in workers], port)
    answering.start()
    api.start()
    time.sleep(5)
    started = time.monotonic()
    try:
        done = CliRunner().invoke(app, ["certs", "renew", "--all", "--spec", str(certs_lab.spec_file)])
    finally:
        ended = time.monotonic()
        time.sleep(5)
        answering.stop()
        api.stop()
    print(f"\n`certs renew --all`: {ended - started:.0f}s; said:\n{done.output[-1500:]}")
    assert done.exit_code == 0, done.output
    assert "one host at a time" in done.output
    gap = api.longest_gap(started, ended)
    print(
        f"the Service through each worker's NodePort: {len(answering.answered)} answered, "
        f"{len(answering.failures)} failed {answering.failures[:3]}; the API from the admin machine: longest gap "
        f"{gap:.1f}s (the one apiserver's restart), {len(api.failures)} failed"
    )
    assert not answering.failures, answering.failures
    served = answering.longest_gap(started, ended)
    assert served <= SERVICE_GAP_LIMIT, (
        f"the Service went {served:.0f}s without an answer ({len(answering.answered)} answered)"
    )
    assert gap <= API_OUTAGE_LIMIT, f"the API did not answer for {gap:.0f}s, more than {API_OUTAGE_LIMIT:.0f}s"
    after = _installed(certs_lab)
    for key, old in before.items():
        if old.is_ca:
            assert after[key].serial == old.serial, f"{key}: a CA changed"
            continue
        if key[1] == layout.KUBELET_ROTATED_CLIENT and key not in after:
            continue  # dropped with the new kubeconfig, and not asked for again (yet)
        assert key in after, f"{key} is gone"
        assert after[key].serial != old.serial and after[key].not_after > old.not_after, (key, old, after[key])
    kubectl.run("delete", "namespace", NAMESPACE, "--wait=false")


def test_a_cluster_whose_certificates_expired_fails_verify_until_certs_renew_brings_it_back(
    certs_lab: CertsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificates expire as if the cluster had been off for three hours: every leaf issued as of then
    (two hours' life) and installed by `up`, which cannot then finish (etcd refuses its own members), and
    every component restarted on them."""
    cluster, state = certs_lab.cluster, certs_lab.state
    then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    everything = renewal.choose(cluster, [], everything=True)
    real_ensure = pki.ensure
    with monkeypatch.context() as patch:
        patch.setattr(pki, "ensure", lambda c, s, now=None, renew=(): real_ensure(c, s, now=then, renew=everything))
        with pytest.raises(ProvisionerError) as stopped:
            lifecycle.up(cluster, state, EventBus(), merge_kubeconfig=False)
    print(f"\n`up` with the expired certificates stopped: {stopped.value.message()[:300]}")
    ssh = certs_lab.ssh()
    for node in cluster.spec.nodes:
        units = [u.name for u in layout.installed_units(node.role, len(cluster.masters))]
        ssh.run(node.name, f"systemctl restart {' '.join(units)} || true", timeout=600)
    now = datetime.datetime.now(datetime.UTC)
    expired = [k for k, c in _installed(certs_lab).items() if not c.is_ca and c.not_after < now]
    assert {where for where, _ in expired} >= {n.name for n in cluster.spec.nodes}, expired
    broken = run(cluster, state, EventBus(), ["hosts"])
    failed = [r for r in broken.results if r.result == FAILED]
    examples = [f"{r.check}: {r.detail[:160]}" for r in failed[:2]]
    print(f"verify with expired certificates: {len(failed)} failed, e.g. {examples}")
    assert any("expired at" in r.detail for r in failed), [r.detail for r in failed]

    started = time.monotonic()
    done = CliRunner().invoke(app, ["certs", "renew", "--all", "--spec", str(certs_lab.spec_file)])
    took = time.monotonic() - started
    print(f"`certs renew --all` on the expired cluster: {took:.0f}s; said:\n{done.output[-1200:]}")
    assert done.exit_code == 0, done.output
    assert "all at once" in done.output
    report = run(cluster, state, EventBus(), ["hosts", "cluster"])
    for r in report.results:
        print(f"{r.seconds:8.1f}s  {r.result:<7} {r.check}: {r.detail[:160]}")
    assert report.ok, "\n".join(f"{r.check}: {r.detail}" for r in report.failed)


def _meta(namespace: str) -> dict[str, str]:
    return {"name": SERVICE, "namespace": namespace}


def _agnhost(lab: CertsLab) -> str:
    return image_names(lab.cluster.spec.kubernetes.version)["agnhost"]
