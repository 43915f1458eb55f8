"""Wrapper go.mod generation: upstream's own directives rule the build, local paths become versions."""

from __future__ import annotations

from provisioner.artifacts import gowrap

KUBERNETES_GOMOD = """\
module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
)

replace github.com/example/broken v1.2.3 => github.com/example/fixed v1.2.4

exclude github.com/example/bad v0.1.0
"""

ETCD_GOMOD = """\
module go.etcd.io/etcd/server/v3

go 1.25.3

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""


def test_kubernetes_staging_modules_become_published_versions() -> None:
    mod = gowrap.parse(KUBERNETES_GOMOD)
    assert gowrap.local_siblings(mod) == ["k8s.io/api", "k8s.io/client-go"]
    text = gowrap.render(
        "provisioner.local/w",
        {"k8s.io/kubernetes": "v1.37.2"},
        [mod],
        gowrap.kubernetes_staging_version("v1.37.2"),
    )
    assert "\tk8s.io/api => k8s.io/api v0.37.2\n" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.37.2\n" in text
    assert "\tk8s.io/kubernetes v1.37.2\n" in text
    # upstream's non-local replacements, excludes and godebug settings are kept verbatim
    assert "github.com/example/broken v1.2.3 => github.com/example/fixed v1.2.4" in text
    assert "exclude (\n\tgithub.com/example/bad v0.1.0\n)" in text
    assert "godebug (\n\tdefault=go1.26\n)" in text
    assert "go 1.26.0\n" in text
    assert "./staging" not in text


def test_etcd_siblings_share_the_tag_and_forbidden_guards_are_dropped() -> None:
    text = gowrap.render(
        "provisioner.local/etcd",
        {"go.etcd.io/etcd/server/v3": "v3.6.16"},
        [gowrap.parse(ETCD_GOMOD), gowrap.parse(KUBERNETES_GOMOD)],
        gowrap.same_version("v3.6.16"),
    )
    assert "go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16" in text
    assert "FORBIDDEN" not in text
    assert "go 1.26.0\n" in text  # the highest go directive among the upstream modules wins


def test_a_sibling_the_wrapper_requires_at_the_same_tag_is_not_replaced() -> None:
    """etcdutl's go.mod replaces the server with ../server; the wrapper requires that server at the tag."""
    etcdutl = gowrap.parse("module go.etcd.io/etcd/etcdutl/v3\n\nreplace go.etcd.io/etcd/server/v3 => ../server\n")
    text = gowrap.render(
        "provisioner.local/etcd",
        {"go.etcd.io/etcd/server/v3": "v3.6.16", "go.etcd.io/etcd/etcdutl/v3": "v3.6.16"},
        [gowrap.parse(ETCD_GOMOD), etcdutl],
        gowrap.same_version("v3.6.16"),
    )
    assert "go.etcd.io/etcd/server/v3 =>" not in text
    assert "\tgo.etcd.io/etcd/server/v3 v3.6.16\n" in text
    assert "go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16" in text


def test_binary_names_follow_go_build() -> None:
    from provisioner.artifacts.build import default_binary_name

    assert default_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert default_binary_name("k8s.io/kubernetes/cmd/kubelet") == "kubelet"
    assert default_binary_name("github.com/coredns/coredns") == "coredns"
