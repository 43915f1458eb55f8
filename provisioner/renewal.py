"""`provisioner certs renew`: new leaf certificates from the same CAs, installed where they are used, and the
services that read them restarted one host at a time.

The certificates are issued on the admin machine (pki.ensure with `renew`: a new key, the same subject and
names, a full spec.pki.leafValidity), then `up` installs them. Every certificate and kubeconfig a service
reads is named in its unit (playbooks/roles/certs digests.yml), so exactly the services that read a renewed
file restart; with `rolling` the etcd, control-plane and worker plays run one host at a time, and each host
waits for its etcd member, apiserver, controller-manager, scheduler or kubelet to answer before the next one
restarts, so with three masters the API stays up and with one it is down for the restart only.

A cluster whose installed certificates have already expired (left off for longer than their lifetime) is
brought back the same way, but all at once: its etcd members and components already refuse each other, so
a member restarted alone with a new certificate would wait for peers that still present expired ones.

The result is checked where it counts: afterwards every copy on the nodes and the admin machine of a renewed
certificate must be the new one (same subject, issuer and names, the new serial).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass

from provisioner import certs, layout, lifecycle, pki, providers
from provisioner.errors import ProvisionerError
from provisioner.events import EventBus, Phase
from provisioner.spec import Cluster
from provisioner.state import State


class RenewError(ProvisionerError):
    """The renewal was refused (bad names, a node that cannot be read) or did not reach every copy."""


@dataclass(frozen=True)
class RenewPlan:
    names: tuple[str, ...]
    rolling: bool
    expired: tuple[certs.Found, ...]  # installed certificates already out of their validity: why not rolling

    def describe(self) -> str:
        if self.rolling:
            return f"{len(self.names)} certificate(s), services restarted one host at a time"
        first = self.expired[0]
        return (
            f"{len(self.names)} certificate(s), all at once: {len(self.expired)} installed certificate(s) are "
            f"out of their validity (the first {first.file} on {first.where}), so the components already refuse "
            "each other"
        )


@dataclass(frozen=True)
class Renewed:
    name: str
    before: datetime.datetime | None  # the admin machine's copy's not-after before the renewal
    after: datetime.datetime


@dataclass
class RenewResult:
    plan: RenewPlan
    renewed: list[Renewed]
    up: lifecycle.UpResult
    seconds: float


def choose(cluster: Cluster, requested: Sequence[str], everything: bool) -> tuple[str, ...]:
    """The leaf stems to renew, or an error naming what is wrong with the request (nothing has changed)."""
    known = pki.leaf_names(cluster)
    if everything and requested:
        raise RenewError("certs renew", "takes --all or certificate names, not both", "give one of them")
    if not everything and not requested:
        raise RenewError("certs renew", "names no certificate", f"give --all, or one or more of: {', '.join(known)}")
    for name in requested:
        if name in pki.CAS:
            raise RenewError(
                f"certs renew {name}",
                "is a CA: renewing it would need every trust bundle to take the new CA first, which is not built yet",
                "renew the leaves it signs (--all); the CAs are valid for ten years",
            )
        if name not in known:
            raise RenewError(
                f"certs renew {name}",
                f"is not a certificate of cluster {cluster.name}",
                f"use one of: {', '.join(known)} (`provisioner certs` shows where each is installed)",
            )
    return tuple(known) if everything else tuple(dict.fromkeys(requested))


def plan(
    cluster: Cluster,
    state: State,
    names: tuple[str, ...],
    found: Sequence[certs.Found | certs.Unreadable],
    now: datetime.datetime,
) -> RenewPlan:
    """Rolling or all at once, from what the nodes hold (read by the caller: certs.from_nodes)."""
    if not (state.pki_dir / "ca.crt").is_file():
        raise RenewError(
            f"cluster {cluster.name}",
            f"has no PKI under {state.pki_dir}: it was never brought up",
            "`provisioner up` issues every certificate",
        )
    unreadable = [f for f in found if isinstance(f, certs.Unreadable)]
    if unreadable:
        raise RenewError(
            "certs renew",
            "cannot read what is installed on " + "; ".join(f"{u.where} ({u.file}: {u.cause})" for u in unreadable),
            "start the node (`provisioner status` shows which are down), or replace it, then renew",
        )
    expired = tuple(
        f
        for f in found
        if isinstance(f, certs.Found)
        and f.where != certs.ADMIN
        and (f.cert.not_after <= now or f.cert.not_before > now)
    )
    return RenewPlan(names, rolling=not expired, expired=expired)


def renew(
    cluster: Cluster,
    state: State,
    bus: EventBus,
    planned: RenewPlan,
    *,
    now: datetime.datetime | None = None,
    strategy: str | None = None,
) -> RenewResult:
    """Issue, install, restart (see the module's doc), then check that every copy is the new one."""
    started = time.monotonic()
    before = _admin_copies(state, planned.names)
    began = now or datetime.datetime.now(datetime.UTC)
    with Phase(bus, "renew certificates", planned.describe()) as phase:
        made = pki.ensure(cluster, state, now=now, renew=planned.names)
        after = _admin_copies(state, pki.leaf_names(cluster))
        phase.progress(f"{len(made.issued)} files issued on the admin machine")
    up = lifecycle.up(cluster, state, bus, strategy=strategy, rolling=planned.rolling)
    with Phase(bus, "check renewed copies", "the nodes and the admin machine") as phase:
        ssh = providers.node_ssh(cluster, state, bus)
        found = certs.everywhere(state, ssh, [n.name for n in cluster.spec.nodes])
        old = stale(found, list(after.values()), [after[n] for n in planned.names], began)
        if old:
            raise RenewError(
                "certs renew",
                f"{len(old)} installed copies are still the old certificates: "
                + "; ".join(f"{f.where} {f.file}" for f in old[:10]),
                "run `provisioner certs renew` again with the same names (it continues; nothing is lost)",
            )
        phase.progress(f"{sum(isinstance(f, certs.Found) for f in found)} certificates read, none stale")
    renewed = [
        Renewed(name, before[name].not_after if name in before else None, after[name].not_after)
        for name in planned.names
    ]
    return RenewResult(planned, renewed, up, time.monotonic() - started)


def stale(
    found: Sequence[certs.Found | certs.Unreadable],
    current: Sequence[certs.CertFacts],
    renewed: Sequence[certs.CertFacts],
    since: datetime.datetime,
) -> list[certs.Found]:
    """Installed certificates with a renewed one's subject, issuer and names that are none of the admin
    machine's current certificates (two leaves may look alike: a lone etcd member's server and peer).

    The kubelet's own renewed client certificate is the exception: a kubelet given a new kubeconfig writes
    its certificate into its certificate dir and at once asks the controller-manager for one of its own
    (seen on the lab), so there it is new when it was issued after `since`, when the renewal began (the
    signer backdates like pki.BACKDATE)."""
    serials: dict[tuple[str, str, tuple[str, ...]], set[int]] = {}
    for cert in current:
        serials.setdefault(cert.identity, set()).add(cert.serial)
    wanted = {c.identity for c in renewed}
    signed_since = since - pki.BACKDATE - datetime.timedelta(minutes=1)
    return [
        f
        for f in found
        if isinstance(f, certs.Found)
        and f.cert.identity in wanted
        and f.cert.serial not in serials[f.cert.identity]
        and not (f.file == layout.KUBELET_ROTATED_CLIENT and f.cert.not_before >= signed_since)
    ]


def _admin_copies(state: State, names: Sequence[str]) -> dict[str, certs.CertFacts]:
    copies: dict[str, certs.CertFacts] = {}
    for name in names:
        path = state.pki_dir / f"{name}.crt"
        if path.is_file():
            read = certs.read_pem(path.read_bytes())
            if read:
                copies[name] = read[0]
    return copies
