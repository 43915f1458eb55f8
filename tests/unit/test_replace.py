"""`replace-master`: what it refuses before anything changes, and how it reads etcd's member list."""

from __future__ import annotations

import ipaddress

import pytest
from typer.testing import CliRunner

from provisioner import cli, paths, replace, spec
from provisioner.errors import ProvisionerError

HA_SPEC = paths.REPO_ROOT / "inventories" / "ha" / "cluster.yaml"

MEMBERS = """{"header":{"cluster_id":1},"members":[
 {"ID":12345678901234567890,"name":"master-1","peerURLs":["https://192.168.56.10:2380"]},
 {"ID":255,"name":"master-2","peerURLs":["https://192.168.56.11:2380"]},
 {"ID":4096,"peerURLs":["https://192.168.56.12:2380"],"isLearner":true}]}"""


def test_members_come_with_the_hex_ids_member_remove_takes() -> None:
    members = replace.parse_members(MEMBERS, "etcdctl")
    assert [(m.id, m.name) for m in members] == [("ab54a98ceb1f0ad2", "master-1"), ("ff", "master-2"), ("1000", "")]


def test_a_replaced_masters_entries_are_found_by_name_or_by_peer_url() -> None:
    cluster = spec.load(HA_SPEC)
    members = replace.parse_members(MEMBERS, "etcdctl")
    assert [m.id for m in replace.stale_members(members, cluster.node("master-2"), 2380)] == ["ff"]
    # added once and never started: no name yet, only its peer URL
    assert [m.id for m in replace.stale_members(members, cluster.node("master-3"), 2380)] == ["1000"]
    assert cluster.node("master-3").address == ipaddress.ip_address("192.168.56.12")


def test_what_etcdctl_prints_when_it_is_not_json_is_a_clear_error() -> None:
    with pytest.raises(ProvisionerError, match="did not print etcd's member list as JSON"):
        replace.parse_members("Error: context deadline exceeded", "etcdctl member list on master-1")


@pytest.mark.parametrize(
    ("spec_file", "name", "message"),
    [
        (HA_SPEC, "worker-1", "worker-1 is not a master of cluster ha (it is a worker)"),
        (HA_SPEC, "master-9", "master-9 is not a master of cluster ha"),
        (paths.default_spec(), "master", "has 1 master(s)"),
    ],
)
def test_preflight_refuses_what_cannot_work(spec_file: object, name: str, message: str) -> None:
    with pytest.raises(ProvisionerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        replace.preflight(spec.load(spec_file), name)  # type: ignore[arg-type]


def test_the_cli_refuses_before_asking_or_touching_anything() -> None:
    result = CliRunner().invoke(cli.app, ["replace-master", "worker-1", "--spec", str(HA_SPEC)])
    assert result.exit_code != 0
    assert "is not a master of cluster ha" in result.output and "replace master" not in result.output
