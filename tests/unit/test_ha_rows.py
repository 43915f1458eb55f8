"""The HA rows' arithmetic (gaps in answers) and when they run; the rows themselves run on the HA lab."""

from __future__ import annotations

import subprocess

import pytest

from provisioner import paths, spec
from provisioner.kube import KubectlError
from provisioner.verify import DISRUPTIVE, ha, selected
from provisioner.verify.kube import NotYet
from provisioner.verify.lab import EverySecond, Lab, Skip

LOG = """\
2026-12-02T01:40:00.000000001Z I1202 01:40:00.000000       1 main.go:79] calling /healthz
2026-12-02T01:40:00.000100000Z I1202 01:40:00.000100       1 main.go:101] authz_header=abc
2026-12-02T01:40:01.000000001Z I1202 01:40:01.000000       1 main.go:79] calling /healthz
2026-12-02T01:40:02.000000001Z I1202 01:40:02.000000       1 main.go:79] calling /healthz
2026-12-02T01:40:47.500000001Z E1202 01:40:47.500000       1 main.go:82] status=failed
2026-12-02T01:40:47.500000002Z E1202 01:40:47.500000       1 main.go:83] error checking /healthz: EOF
2026-12-02T01:40:48.000000001Z I1202 01:40:48.000000       1 main.go:79] calling /healthz
2026-12-02T01:40:49.000000001Z I1202 01:40:49.000000       1 main.go:79] calling /healthz
not a klog line
"""


def test_the_pod_gap_runs_from_the_last_answered_call_to_the_next_answered_one() -> None:
    gap, answered, failed = ha.pod_api_gap(LOG)
    # 01:40:01 answered, 01:40:02 failed (after 45 s), 01:40:48 answered: 47 s without an answer.
    assert (round(gap, 3), answered, failed) == (47.0, 4, 1)


def test_a_pod_log_without_two_answers_has_no_finite_gap() -> None:
    assert ha.pod_api_gap("")[0] == float("inf")


def test_the_admin_gap_counts_the_edges_of_the_window() -> None:
    probe = ha.AdminProbe.__new__(ha.AdminProbe)
    probe.answered = [1.0, 2.0, 3.0, 30.0, 31.0]
    assert probe.longest_gap(2.5, 40.0) == 27.0  # 3.0 -> 30.0
    assert probe.longest_gap(31.5, 50.0) == 18.5  # nothing answered after the cut: the whole window


def test_a_probe_keeps_every_kind_of_failure_and_goes_on() -> None:
    """The certs lab's Service probe once died at its first request (a NotYet, no ProvisionerError) and the
    test, which looked only at its failures, passed with nothing answered."""
    raised: list[BaseException] = [
        NotYet("GET http://192.168.56.11:30080/hostname: connection refused"),
        subprocess.TimeoutExpired(["kubectl"], 20),
        KubectlError("kubectl get --raw /readyz", "the server is currently unable to handle the request"),
    ]

    def request(n: int) -> None:
        if n <= len(raised):
            raise raised[n - 1]
        if n > 5:
            probe.done.set()

    probe = EverySecond("test", request, interval=0)
    probe.start()
    probe.join(timeout=10)
    assert not probe.is_alive()
    assert len(probe.answered) == 3, probe.failures  # requests 4 to 6
    assert [f.split(":")[0] for f in probe.failures] == ["NotYet", "TimeoutExpired", "kubectl get --raw /readyz"]


@pytest.mark.parametrize("row", [ha.check_master_loss, ha.check_etcd_quorum])
def test_the_rows_skip_with_one_master(row: object) -> None:
    lab = Lab(spec.load(paths.default_spec()), None, None, [], "agnhost")  # type: ignore[arg-type]
    with pytest.raises(Skip, match="three masters"):
        row(lab)  # type: ignore[operator]


def test_the_ha_alias_selects_both_rows_last() -> None:
    assert selected(["ha"]) == ["master-loss", "etcd-quorum"]
    assert selected(None)[-2:] == ["master-loss", "etcd-quorum"]


def test_the_cluster_alias_takes_no_node_down() -> None:
    """`--only cluster` (the HA tier's check after a restore) once ran every row, the master power-offs too."""
    chosen = set(selected(["cluster"]))
    assert chosen and not chosen & DISRUPTIVE
    assert not chosen & set(selected(["self-healing"]))
    assert set(selected(["hosts", "cluster", "security", "self-healing", "ha"])) == set(selected(None))
