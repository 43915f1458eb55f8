"""Rows that hold only with several masters: one master's machine lost (master-loss), two lost (etcd-quorum).

Both pull a master's plug (the whole VM, not a daemon) and watch the cluster from where its users stand:
the admin machine's kubeconfig (through its loopback balancer over every master) and a pod calling the API
through the in-cluster Service. Every wait is bounded and says what it waited for; the machines are
started again in a `finally`, so a failed row leaves the control plane whole.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import re
import time
from collections.abc import Sequence

from provisioner import layout
from provisioner.errors import ProvisionerError
from provisioner.providers.base import Provider
from provisioner.spec import Cluster, Node, VagrantProvider
from provisioner.verify.kube import CheckFailed, NotYet, Ssh, wait_for
from provisioner.verify.lab import (
    POD_READY_TIMEOUT,
    ClusterCheck,
    EverySecond,
    Lab,
    Skip,
    agnhost_deployment,
    deploy,
    scratch_namespace,
    wait_ready_pods,
)

# Leader-elected components whose lease must move off a lost master.
LEADERS = ("kube-controller-manager", "kube-scheduler")
# Longest a request may go unanswered while one master is lost. The admin machine's balancer drops a dead
# master after its health checks fail (apiserver_lb: 3 checks 2 s apart) and retries a refused connection
# on another; a pod's client-go notices a dead connection by its HTTP/2 ping (30 s idle + 15 s), and the
# kubernetes Service stops sending new ones to the master once the apiservers drop it from the endpoints.
ADMIN_GAP_LIMIT = 60.0
POD_GAP_LIMIT = 120.0
# Bounds on the control plane's own recovery under emulation.
LEADER_MOVE_TIMEOUT = 240.0
REJOIN_TIMEOUT = 600.0
# A write with etcd out of quorum must come back as an error before the apiserver's own request timeout
# (60 s) has passed twice over: an answer, not a hang.
REFUSED_WITHIN = 90.0
PROBE_INTERVAL = 1.0


def _require_ha(lab: Lab) -> Provider:
    if len(lab.cluster.masters) < 3:
        raise Skip("needs three masters (for example inventories/ha/cluster.yaml)")
    if lab.provider is None or not isinstance(lab.cluster.spec.provider, VagrantProvider):
        raise Skip("static hosts cannot be powered off and on by provisioner; pull a master's plug by hand")
    return lab.provider


def _as_admin(lab: Lab) -> Lab:
    """The lab as the user's shell sees it: every API call through the admin machine's kubeconfig."""
    return dataclasses.replace(lab, kubectl=lab.admin or lab.kubectl)


# --- what the control plane reports ------------------------------------------------------------------


def lease_holders(lab: Lab) -> dict[str, str]:
    """Which master holds each leader lease (holderIdentity is HOSTNAME_UUID)."""
    holders = {}
    for name in LEADERS:
        lease = lab.kubectl.json("get", "lease", name, "-n", "kube-system", timeout=30)
        holders[name] = str(lease["spec"].get("holderIdentity", "")).split("_", 1)[0]
    return holders


def etcd_health(lab: Lab, via: Node) -> dict[str, bool]:
    return etcd_health_via(lab.ssh, lab.cluster, via)


def etcd_health_via(ssh: Ssh, cluster: Cluster, via: Node) -> dict[str, bool]:
    """Each master's etcd member healthy or not, as seen from `via` (etcdctl endpoint health --cluster)."""
    by_address = {str(m.address): m.name for m in cluster.masters}
    proc = ssh.run(via.name, f"{layout.ETCDCTL} endpoint health --cluster -w json", check=False, timeout=90)
    try:
        answers = json.loads(proc.stdout.decode() or "[]")
    except ValueError:
        raise NotYet(f"etcdctl on {via.name}: {proc.stderr.decode().strip()[:300]}") from None
    health = {m.name: False for m in cluster.masters}
    for answer in answers:
        address = re.sub(r"^https://|:\d+$", "", str(answer.get("endpoint", "")))
        if address in by_address:
            health[by_address[address]] = bool(answer.get("health"))
    return health


def _describe_health(health: dict[str, bool]) -> str:
    return f"{sum(health.values())}/{len(health)} healthy ({', '.join(n for n, ok in sorted(health.items()) if ok)})"


def wait_etcd(lab: Lab, via: Node, healthy: int, timeout: float) -> dict[str, bool]:
    def probe() -> dict[str, bool]:
        health = etcd_health(lab, via)
        if sum(health.values()) != healthy:
            raise NotYet(f"etcd {_describe_health(health)}")
        return health

    return wait_for(f"etcd to report {healthy} of {len(lab.cluster.masters)} members healthy", probe, timeout, 5)


def wait_apiserver_ready(lab: Lab, master: Node, timeout: float) -> None:
    """That master's own apiserver answers /readyz (asked directly, from inside the lab)."""
    server = f"--server=https://{master.address}:{layout.PORTS['apiserver']}"

    def probe() -> None:
        proc = lab.kubectl.run(server, "get", "--raw=/readyz", "--request-timeout=20s", check=False, timeout=40)
        if proc.stdout.strip() != "ok":
            raise NotYet(f"/readyz on {master.name}: {(proc.stdout + proc.stderr).strip()[-200:]}")

    wait_for(f"the apiserver on {master.name} to be ready again", probe, timeout, 5)


def power_cycle_back(lab: Lab, nodes: Sequence[Node]) -> None:
    """Start machines a row powered off (Vagrant boots the same disks: etcd's data is still there)."""
    assert lab.provider is not None
    if not nodes:
        return
    for node in nodes:
        lab.ssh.close(node.name)
    lab.progress("starting " + ", ".join(n.name for n in nodes) + " again")
    lab.provider.create(list(nodes))


# --- requests during an outage -------------------------------------------------------------------------


class AdminProbe(EverySecond):
    """From the admin machine, a write (a new ConfigMap) and a read of it, once a second, each bounded."""

    def __init__(self, lab: Lab, namespace: str) -> None:
        super().__init__("admin-api-probe", self.write_and_read, PROBE_INTERVAL)
        self.lab, self.namespace = lab, namespace

    def write_and_read(self, n: int) -> None:
        name = f"probe-{n}"
        self.lab.kubectl.run(
            "-n",
            self.namespace,
            "create",
            "configmap",
            name,
            f"--from-literal=n={n}",
            "--request-timeout=10s",
            timeout=20,
        )
        self.lab.kubectl.run(
            "-n", self.namespace, "get", "configmap", name, "-o", "name", "--request-timeout=10s", timeout=20
        )


# klog's header: severity letter, MMDD, time (agnhost inclusterclient logs "calling /healthz" before each
# request and "status=failed" after a failed one).
_KLOG = re.compile(r"^([IEW])\d{4} (\d\d:\d\d:\d\d\.\d+)\s+\d+\s+\S+\] (.*)$")


def pod_api_gap(log: str) -> tuple[float, int, int]:
    """From an inclusterclient log: the longest time between two answered /healthz calls, and the counts of
    answered and failed calls."""
    calls: list[tuple[datetime.datetime, bool]] = []
    for line in log.splitlines():
        stamp, _, rest = line.partition(" ")
        match = _KLOG.match(rest)
        if not match:
            continue
        try:
            when = datetime.datetime.fromisoformat(stamp)  # the kubelet's RFC 3339 time (--timestamps)
        except ValueError:
            continue
        if match.group(3).startswith("calling /healthz"):
            calls.append((when, True))
        elif match.group(3).startswith("status=failed") and calls:
            calls[-1] = (calls[-1][0], False)
    answered = [when for when, ok in calls if ok]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(answered)]
    return (max(gaps) if gaps else float("inf")), len(answered), len(calls) - len(answered)


def _api_client(lab: Lab, ns: str) -> str:
    """A pod polling the API's /healthz every second through the kubernetes Service; its name."""
    deploy(lab, ns, [agnhost_deployment("apiclient", lab.agnhost_image, args=["inclusterclient", "--poll-interval=1"])])
    return str(wait_ready_pods(lab, ns, "apiclient", 1)[0]["metadata"]["name"])


# --- the rows ------------------------------------------------------------------------------------------


def check_master_loss(lab: Lab) -> str:
    provider = _require_ha(lab)
    inside = lab  # direct questions to one master go from inside the lab
    lab = _as_admin(lab)
    with scratch_namespace(lab, "master-loss") as ns:
        by_name = {m.name: m for m in lab.cluster.masters}
        before = lease_holders(lab)
        # The controller-manager's leader: its leadership must move, and its etcd member may be the leader.
        victim = by_name.get(before["kube-controller-manager"]) or lab.cluster.masters[0]
        survivors = [m for m in lab.cluster.masters if m.name != victim.name]
        wait_etcd(inside, survivors[0], len(lab.cluster.masters), 120)
        client = _api_client(lab, ns)
        probe = AdminProbe(lab, ns)
        probe.start()
        time.sleep(5)  # the probes answer before the plug is pulled
        held = ", ".join(k for k, v in before.items() if v == victim.name) or "no lease"
        lab.progress(f"powering off {victim.name} (holds {held})")
        cut = time.monotonic()
        provider.power_off(victim)
        try:
            # Through the admin machine's kubeconfig, like every request of this row: it may take as long
            # as the admin machine may go without an answer.
            try:
                wait_for(
                    "a Deployment to be created through the admin machine's kubeconfig",
                    lambda: deploy(lab, ns, [agnhost_deployment("during", lab.agnhost_image, replicas=2)]),
                    ADMIN_GAP_LIMIT,
                    3,
                )
            except CheckFailed as exc:
                raise CheckFailed(f"the admin machine lost the API when {victim.name} went: {exc}") from None

            def moved() -> dict[str, str]:
                holders = lease_holders(lab)
                if victim.name in holders.values() or "" in holders.values():
                    raise NotYet(f"leases {holders}")
                return holders

            after = wait_for(f"the leader leases to move off {victim.name}", moved, LEADER_MOVE_TIMEOUT, 3)
            wait_ready_pods(lab, ns, "during", 2, timeout=POD_READY_TIMEOUT)
            scheduled = time.monotonic() - cut
            health = wait_etcd(inside, survivors[0], len(survivors), 120)
            time.sleep(max(0.0, 60 - (time.monotonic() - cut)))  # a minute of requests against two masters
            probe.stop()
            admin_gap = probe.longest_gap(cut, time.monotonic())
        finally:
            probe.stop()
            power_cycle_back(inside, [victim])
        wait_etcd(inside, survivors[0], len(lab.cluster.masters), REJOIN_TIMEOUT)
        wait_apiserver_ready(inside, victim, REJOIN_TIMEOUT)
        back = time.monotonic() - cut
        log = lab.kubectl.run("logs", "-n", ns, client, "--timestamps", timeout=60).stdout
        pod_gap, answered, failed = pod_api_gap(log)
    problems = []
    if admin_gap > ADMIN_GAP_LIMIT:
        problems.append(f"the admin machine went {admin_gap:.0f}s without an answer (limit {ADMIN_GAP_LIMIT:.0f}s)")
    if pod_gap > POD_GAP_LIMIT:
        problems.append(f"the pod went {pod_gap:.0f}s without an answer (limit {POD_GAP_LIMIT:.0f}s)")
    detail = (
        f"{victim.name} powered off; admin machine: {len(probe.answered)} write+read answered, "
        f"{len(probe.failures)} failed, longest gap {admin_gap:.1f}s; pod via the kubernetes Service: {answered} "
        f"answered, {failed} failed, longest gap {pod_gap:.1f}s; leases {before} -> {after}; a Deployment made "
        f"during the outage Ready after {scheduled:.0f}s; etcd {_describe_health(health)} during, "
        f"{len(lab.cluster.masters)}/{len(lab.cluster.masters)} after {victim.name} rejoined ({back:.0f}s)"
    )
    if problems:
        raise CheckFailed("; ".join(problems) + f" ({detail}; failures: {probe.failures[:3]})")
    return detail


def check_etcd_quorum(lab: Lab) -> str:
    provider = _require_ha(lab)
    inside = lab
    lab = _as_admin(lab)
    with scratch_namespace(lab, "quorum") as ns:
        # A majority down (two of three): the first master stays, the ones after it go.
        keeper, lost = lab.cluster.masters[0], lab.cluster.masters[1 : len(lab.cluster.masters) // 2 + 2]
        wait_etcd(inside, keeper, len(lab.cluster.masters), 120)
        lab.progress(f"powering off {', '.join(m.name for m in lost)}")
        for master in lost:
            provider.power_off(master)
        cut = time.monotonic()
        try:
            # An answer, not a hang: no client-side timeout, so only the apiserver can end the request.
            started = time.monotonic()
            try:
                proc = lab.kubectl.run(
                    "-n", ns, "create", "configmap", "out-of-quorum", check=False, timeout=REFUSED_WITHIN
                )
            except ProvisionerError as exc:
                raise CheckFailed(
                    f"a write with {len(lost)} of {len(lab.cluster.masters)} masters down hung: {exc.message()}"
                ) from None
            refused_after = time.monotonic() - started
            if proc.returncode == 0:
                raise CheckFailed(f"a write succeeded with {len(lost)} of {len(lab.cluster.masters)} etcd members down")
            refusal = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1][:200]
            returned = lost[0]
            power_cycle_back(inside, [returned])
            rebooted = time.monotonic() - cut

            def writes() -> None:
                proc = lab.kubectl.run(
                    "-n", ns, "create", "configmap", "quorum-back", "--request-timeout=20s", check=False, timeout=40
                )
                if proc.returncode != 0 and "AlreadyExists" not in proc.stderr:
                    raise NotYet(proc.stderr.strip()[-200:])

            wait_for(f"writes to succeed again once {returned.name} is back", writes, REJOIN_TIMEOUT, 5)
            writable = time.monotonic() - cut
        finally:
            power_cycle_back(inside, [m for m in lost if m.name not in _running(inside)])
        wait_etcd(inside, keeper, len(lab.cluster.masters), REJOIN_TIMEOUT)
        for master in lost:
            wait_apiserver_ready(inside, master, REJOIN_TIMEOUT)
        whole = time.monotonic() - cut
    return (
        f"{', '.join(m.name for m in lost)} powered off: a write was refused after {refused_after:.0f}s "
        f"({refusal}); {returned.name} booted after {rebooted:.0f}s, writes succeeded again after {writable:.0f}s "
        f"with no action; all {len(lab.cluster.masters)} members healthy after {whole:.0f}s"
    )


def _running(lab: Lab) -> set[str]:
    """The masters whose machines are running now."""
    assert lab.provider is not None
    return {s.name for s in lab.provider.status() if s.state == "running"}


GROUP: list[ClusterCheck] = [
    ClusterCheck(
        "master-loss",
        "one master's machine powered off: the API answers the admin machine and pods, leadership moves, "
        "a new Deployment runs, etcd keeps quorum; the master rejoins",
        check_master_loss,
    ),
    ClusterCheck(
        "etcd-quorum",
        "two masters powered off: writes are refused with an error, not a hang, and succeed again by "
        "themselves when one returns",
        check_etcd_quorum,
    ),
]
