"""The spec validator: the default spec passes; each broken spec gives one clear line and exit 2."""

from __future__ import annotations

import copy
import datetime
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import paths, spec
from provisioner.errors import SpecError
from provisioner.providers.vagrant import generate_ssh_key

DEFAULT = yaml.safe_load(paths.default_spec().read_text())

Mutation = Callable[[dict[str, Any]], None]


def mutated(change: Mutation) -> dict[str, Any]:
    data = copy.deepcopy(DEFAULT)
    change(data)
    return data


def static_spec(tmp_path: Path, with_key: bool = True) -> dict[str, Any]:
    key = tmp_path / "id_ed25519"
    generate_ssh_key(key)  # the validator reads the key as ssh would: a private key, mode 600
    data = copy.deepcopy(DEFAULT)
    data["spec"]["provider"] = {"type": "static"}
    for node in data["spec"]["nodes"]:
        node.pop("cpus")
        node.pop("memory")
        node["ssh"] = {"user": "root", "key": str(key)} if with_key else {"user": "root"}
    return data


def test_default_spec_is_valid() -> None:
    cluster = spec.load(paths.default_spec())
    assert cluster.name == "lab"
    assert [n.name for n in cluster.masters] == ["master"]
    assert [n.name for n in cluster.workers] == ["worker-1", "worker-2"]
    assert cluster.spec.kubernetes.version.startswith("v1.")


def test_pod_cidrs_are_stable_when_nodes_change() -> None:
    cluster = spec.load(paths.default_spec())
    smaller = spec.parse(mutated(lambda d: d["spec"]["nodes"].pop(1)))
    assert smaller.pod_cidrs["worker-2"] == cluster.pod_cidrs["worker-2"]
    assert len(set(cluster.pod_cidrs.values())) == len(cluster.spec.nodes)
    for cidr in cluster.pod_cidrs.values():
        assert cidr.subnet_of(cluster.spec.network.pod_subnet)


def test_pod_cidrs_of_a_large_pod_subnet_are_counted_not_listed() -> None:
    data = mutated(
        lambda d: d["spec"]["network"].update(
            podSubnet="10.0.0.0/8", podSubnetPerNodePrefix=28, serviceSubnet="172.16.0.0/16"
        )
    )
    started = time.monotonic()
    cidrs = spec.parse(data).pod_cidrs
    assert time.monotonic() - started < 0.5  # a million /28s in the pod subnet, none of them listed
    assert {name: str(c) for name, c in cidrs.items()} == {
        "master": "10.0.0.160/28",  # host number 10: the 11th /28
        "worker-1": "10.0.0.176/28",
        "worker-2": "10.0.0.192/28",
    }


def test_derived_service_addresses() -> None:
    net = spec.load(paths.default_spec()).spec.network
    assert str(net.apiserver_service_ip) == "10.96.0.1"
    assert str(net.dns_service_ip) == "10.96.0.10"


def _parent(data: dict[str, Any], path: str) -> tuple[Any, int | str]:
    """The container holding the dotted `path` (digits index lists), and the last key."""
    *parents, last = path.split(".")
    node: Any = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    return node, int(last) if last.isdigit() else last


def _set(path: str, value: Any) -> Mutation:
    def change(data: dict[str, Any]) -> None:
        node, key = _parent(data, path)
        node[key] = value

    return change


def _delete(path: str) -> Mutation:
    def change(data: dict[str, Any]) -> None:
        node, key = _parent(data, path)
        del node[key]

    return change


BROKEN: list[tuple[str, Mutation, str, str]] = [
    # (id, change, field path expected in the message, a fragment of the explanation)
    ("unknown-key", _set("spec.contol_plane", 1), "spec.contol_plane", "unknown key 'contol_plane'"),
    ("unknown-node-key", _set("spec.nodes.0.adress", "x"), "spec.nodes[0].adress", "allowed keys here"),
    (
        "unknown-provider-key",
        _set("spec.provider.boxx", "y"),
        "spec.provider.boxx",
        "allowed keys here: accelerator, backend, box, isolation, type",
    ),
    ("wrong-type-cpus", _set("spec.nodes.1.cpus", "two"), "spec.nodes[1].cpus", "'two'"),
    ("wrong-type-nodes", _set("spec.nodes", {"master": 1}), "spec.nodes", "list"),
    ("missing-role", _delete("spec.nodes.1.role"), "spec.nodes[1].role", "required field is missing"),
    ("missing-network", _delete("spec.network"), "spec.network", "required field is missing"),
    ("missing-metadata", _delete("metadata"), "metadata", "required field is missing"),
    ("bad-role", _set("spec.nodes.1.role", "boss"), "spec.nodes[1].role", "'master' or 'worker'"),
    ("bad-kind", _set("kind", "Clustr"), "kind", "'Cluster'"),
    ("bad-api-version", _set("apiVersion", "v2"), "apiVersion", "provisioner.dev/v1alpha1"),
    ("bad-provider-type", _set("spec.provider.type", "aws"), "spec.provider", "'aws'"),
    ("bad-name", _set("metadata.name", "Lab_1"), "metadata.name", "lowercase"),
    ("no-master", _set("spec.nodes.0.role", "worker"), "spec.nodes", "no node has role 'master'"),
    (
        "no-worker",
        lambda d: d["spec"]["nodes"].__setitem__(slice(1, None), []),
        "spec.nodes",
        "no node has role 'worker'",
    ),
    ("duplicate-name", _set("spec.nodes.2.name", "worker-1"), "spec.nodes[2].name", "already used"),
    ("duplicate-address", _set("spec.nodes.2.address", "192.168.56.11"), "spec.nodes[2].address", "unique"),
    ("bad-address", _set("spec.nodes.0.address", "192.168.56.300"), "spec.nodes[0].address", "IPv4"),
    ("address-outside", _set("spec.nodes.0.address", "10.1.2.3"), "spec.nodes[0].address", "nodeSubnet"),
    ("malformed-cidr", _set("spec.network.podSubnet", "10.244.0.0/33"), "spec.network.podSubnet", "33"),
    ("host-bits-cidr", _set("spec.network.nodeSubnet", "192.168.56.1/24"), "spec.network.nodeSubnet", "host"),
    (
        "overlap-pod-service",
        _set("spec.network.serviceSubnet", "10.244.128.0/20"),
        "spec.network.serviceSubnet",
        "overlaps spec.network.podSubnet",
    ),
    (
        "overlap-node-pod",
        _set("spec.network.podSubnet", "192.168.0.0/16"),
        "spec.network.podSubnet",
        "overlaps spec.network.nodeSubnet",
    ),
    (
        "pod-subnet-too-small",
        _set("spec.network.podSubnet", "10.244.0.0/23"),
        "spec.network.podSubnet",
        "fewer than the 3 nodes",
    ),
    ("version-form", _set("spec.kubernetes.version", "1.37"), "spec.kubernetes.version", "vMAJOR.MINOR.PATCH"),
    ("version-unsupported", _set("spec.kubernetes.version", "v1.20.0"), "spec.kubernetes.version", "not supported"),
    ("mirror-without-url", _set("spec.artifacts.source", "mirror"), "spec.artifacts.mirror", "required when"),
    ("bad-source", _set("spec.artifacts.source", "docker"), "spec.artifacts.source", "'build'"),
    ("memory-too-small", _set("spec.nodes.1.memory", 64), "spec.nodes[1].memory", "512"),
    ("lifetime-form", _set("spec.pki", {"leafValidity": "1y"}), "spec.pki.leafValidity", "30m, 2h or 365d"),
    ("lifetime-number", _set("spec.pki", {"leafValidity": 365}), "spec.pki.leafValidity", "365"),
    ("lifetime-past-ca", _set("spec.pki", {"leafValidity": "4000d"}), "spec.pki.leafValidity", "cannot outlive"),
    (
        "lifetime-within-margin",
        _set("spec.pki", {"leafValidity": "2h"}),
        "spec.pki.leafValidity",
        "not longer than spec.pki.renewBefore (30d)",
    ),
    ("margin-form", _set("spec.pki", {"renewBefore": "-1d"}), "spec.pki.renewBefore", "not a duration"),
]


@pytest.mark.parametrize(("change", "field", "fragment"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_spec_names_field_and_cause(change: Mutation, field: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        spec.parse(mutated(change), where="cluster.yaml")
    lines = info.value.problems
    matching = [line for line in lines if line.startswith(f"cluster.yaml: {field}:")]
    assert matching, f"no line names {field}: {lines}"
    assert any(fragment in line for line in matching), f"{fragment!r} not explained in {matching}"


def test_every_problem_is_reported_not_just_the_first() -> None:
    def change(d: dict[str, Any]) -> None:
        d["spec"]["nodes"][0]["cpus"] = "x"
        d["spec"]["nodes"][1]["typo"] = 1
        del d["spec"]["nodes"][2]["name"]

    with pytest.raises(SpecError) as info:
        spec.parse(mutated(change), where="c.yaml")
    assert len(info.value.problems) == 3


def test_static_host_without_key(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        spec.parse(static_spec(tmp_path, with_key=False), where="c.yaml")
    assert any(p.startswith("c.yaml: spec.nodes[0].ssh.key: required for a static host") for p in info.value.problems)


def test_static_host_without_address(tmp_path: Path) -> None:
    data = static_spec(tmp_path)
    del data["spec"]["nodes"][1]["address"]
    with pytest.raises(SpecError) as info:
        spec.parse(data, where="c.yaml")
    assert info.value.problems == [
        "c.yaml: spec.nodes[1].address: required field is missing; give the node's IPv4 address"
    ]


def test_static_host_key_must_exist(tmp_path: Path) -> None:
    data = static_spec(tmp_path)
    data["spec"]["nodes"][2]["ssh"]["key"] = str(tmp_path / "missing")
    with pytest.raises(SpecError) as info:
        spec.parse(data, where="c.yaml")
    assert any("spec.nodes[2].ssh.key" in p and "not a file" in p for p in info.value.problems)


def test_valid_static_spec(tmp_path: Path) -> None:
    cluster = spec.parse(static_spec(tmp_path), where="c.yaml")
    assert cluster.spec.provider.type == "static"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("spec: [unclosed\n", "not valid YAML at line"),
        ("", "the document is empty"),
        ("- a\n- b\n", "the document is list"),
        ("just a string\n", "the document is str"),
    ],
    ids=["not-yaml", "empty", "list", "scalar"],
)
def test_not_a_yaml_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        spec.load(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: ")
    assert fragment in info.value.problems[0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_validate_default_spec_passes() -> None:
    result = _cli("validate")
    assert result.returncode == 0, result.stderr
    assert "cluster 'lab'" in result.stdout


@pytest.mark.parametrize(("change", "field", "fragment"), [b[1:] for b in BROKEN[:6]], ids=[b[0] for b in BROKEN[:6]])
def test_cli_validate_broken_spec_one_line_no_traceback(
    tmp_path: Path, change: Mutation, field: str, fragment: str
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(mutated(change)))
    result = _cli("validate", "--spec", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"{path}: {field}:" in lines[0] and fragment in lines[0]


def test_cli_missing_file() -> None:
    result = _cli("validate", "--spec", "/nonexistent/cluster.yaml")
    assert result.returncode == 2
    assert "/nonexistent/cluster.yaml: file not found" in result.stderr


def test_static_key_path_is_relative_to_the_spec_file(tmp_path: Path) -> None:
    data = static_spec(tmp_path)
    for node in data["spec"]["nodes"]:
        node["ssh"]["key"] = "id_ed25519"  # beside the spec file, not the working directory
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    cluster = spec.load(path)
    assert {n.ssh.key for n in cluster.spec.nodes if n.ssh} == {tmp_path / "id_ed25519"}


def test_short_certificate_lifetimes_for_tests_are_accepted() -> None:
    cluster = spec.parse(mutated(_set("spec.pki", {"leafValidity": "2h", "renewBefore": "30m"})))
    assert cluster.spec.pki.leaf == datetime.timedelta(hours=2)
    assert cluster.spec.pki.margin == datetime.timedelta(minutes=30)
    default = spec.load(paths.default_spec()).spec.pki
    assert (default.leaf, default.margin) == (datetime.timedelta(days=365), datetime.timedelta(days=30))
