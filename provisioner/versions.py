"""Pinned versions: one row per supported Kubernetes release.

Every component a cluster runs is pinned here and nowhere else. A Kubernetes version absent from
this table is refused by the spec validator, so nothing is ever built or fetched from a branch tip.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ComponentSet:
    kubernetes: str
    etcd: str
    containerd: str
    runc: str
    cni_plugins: str
    crictl: str
    coredns: str
    # pause and agnhost come from the Kubernetes module itself (build/pause/Makefile TAG and
    # test/images/agnhost/VERSION); the build refuses a pin that disagrees with the source.
    pause: str
    agnhost: str


SUPPORTED: dict[str, ComponentSet] = {
    "v1.37.2": ComponentSet(
        kubernetes="v1.37.2",
        etcd="v3.6.16",
        containerd="v2.2.9",
        runc="v1.5.2",
        cni_plugins="v1.9.1",
        crictl="v1.37.0",
        coredns="v1.14.7",
        pause="3.10.2",
        agnhost="2.66.1",
    ),
    "v1.36.3": ComponentSet(
        kubernetes="v1.36.3",
        etcd="v3.6.16",
        containerd="v2.2.9",
        runc="v1.5.2",
        cni_plugins="v1.9.1",
        crictl="v1.37.0",
        coredns="v1.14.7",
        pause="3.10.2",
        agnhost="2.63.0",
    ),
}

DEFAULT_KUBERNETES = "v1.37.2"


def components(kubernetes: str) -> ComponentSet:
    return SUPPORTED[kubernetes]
