"""Rotating the Secret encryption key: the config's steps, resuming from any point, the several-masters path,
reading etcd's and the apiserver's answers, keys kept out of every message, the push with real Ansible.

The rotation runs for real on real files in a temporary PKI directory; the cluster is tests/unit/simcluster.py,
which answers in the formats recorded from a real etcd and kube-apiserver (tests/unit/data).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import localnode
import pytest
import yaml
from simcluster import Interrupted, SimCluster

from provisioner import encryption, layout, runner
from provisioner.encryption import EncryptionConfigError, RotationError
from provisioner.events import EventBus, Recorder

DATA = Path(__file__).parent / "data"
THREE = ("master-1", "master-2", "master-3")


def _pki(tmp_path: Path) -> Path:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir(parents=True)
    assert encryption.ensure_config(pki_dir)
    return pki_dir


def _doc(pki_dir: Path) -> dict[str, Any]:
    return encryption.read_config(pki_dir)


def _keys(pki_dir: Path) -> list[str]:
    return encryption.key_names(_doc(pki_dir), "test")


def _secret_of(pki_dir: Path, name: str) -> str:
    keys = _doc(pki_dir)["resources"][0]["providers"][0]["secretbox"]["keys"]
    secret: str = next(k["secret"] for k in keys if k["name"] == name)
    return secret


def _rotate(pki_dir: Path, sim: SimCluster, bus: EventBus | None = None, **kw: float) -> encryption.RotationResult:
    planned = encryption.plan(pki_dir, sim.masters)
    return encryption.rotate(planned, pki_dir, sim, bus or EventBus(), timeout=kw.get("timeout", 5), interval=0)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_finished(pki_dir: Path, sim: SimCluster, new: str) -> None:
    doc = _doc(pki_dir)
    assert encryption.key_names(doc, "test") == [new]
    assert list(doc["resources"][0]["providers"][1]) == ["identity"]
    assert not encryption.record_path(pki_dir).exists()
    assert set(sim.stored_keys().values()) == {new}, sim.stored_keys()
    assert all(sim.running_keys(m) == [new] for m in sim.masters)
    assert f"{encryption.PROBE_NAMESPACE}/{encryption.PROBE_NAME}" not in sim.stored_keys()
    assert sim.lost == [], sim.lost
    assert _mode(encryption.config_path(pki_dir)) == 0o600


# --- the config file ---------------------------------------------------------------------------------


def test_a_new_config_holds_one_random_secretbox_key_named_key1_then_identity(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    doc = _doc(pki_dir)
    providers = doc["resources"][0]["providers"]
    assert doc["resources"][0]["resources"] == ["secrets"]
    assert [list(p) for p in providers] == [["secretbox"], ["identity"]]
    assert _keys(pki_dir) == ["key1"]
    assert len(base64.b64decode(_secret_of(pki_dir, "key1"))) == 32
    assert _mode(encryption.config_path(pki_dir)) == 0o600
    assert encryption.ensure_config(pki_dir) is False  # kept, byte for byte
    assert _doc(pki_dir) == doc


@pytest.mark.parametrize(
    ("names", "following"),
    [
        ({"secretbox": ["key1"]}, "key2"),
        ({"secretbox": ["key3", "key1"]}, "key4"),
        ({"secretbox": ["key9"]}, "key10"),
        # An aescbc cluster given a secretbox key by an older `up`: every provider's names count.
        ({"secretbox": ["secretbox-1"], "aescbc": ["key1"]}, "key2"),
        ({"secretbox": ["primary"]}, "key1"),
    ],
)
def test_the_new_key_is_named_after_the_existing_ones(names: dict[str, list[str]], following: str) -> None:
    providers: list[dict[str, Any]] = [
        {p: {"keys": [{"name": n, "secret": "c2VjcmV0"} for n in ns]}} for p, ns in names.items()
    ]
    doc = {"resources": [{"resources": ["secrets"], "providers": [*providers, {"identity": {}}]}]}
    assert encryption.next_key_name(doc, "test") == following


# --- the rotation, one master and three ---------------------------------------------------------------


def test_one_master_goes_from_one_key_to_new_old_to_new_only(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    old_secret = _secret_of(pki_dir, "key1")
    sim = SimCluster(pki_dir, busy_writer=False)
    result = _rotate(pki_dir, sim)
    assert sim.pushed == [["key2", "key1"], ["key2"]]
    assert (result.old, result.new, result.resumed) == ("key1", "key2", False)
    assert result.rewritten == 3  # the cluster's three Secrets; the probe is not counted
    assert [s.name for s in result.steps] == ["write with key2", "rewrite secrets", "remove key1"]
    _assert_finished(pki_dir, sim, "key2")
    assert old_secret not in encryption.config_path(pki_dir).read_text()
    # Run again: a new rotation, named on.
    again = _rotate(pki_dir, sim)
    assert (again.old, again.new) == ("key2", "key3")
    _assert_finished(pki_dir, sim, "key3")


def test_three_masters_can_read_the_new_key_everywhere_before_any_writes_with_it(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    sim = SimCluster(pki_dir, THREE)
    result = _rotate(pki_dir, sim)
    assert sim.pushed == [["key1", "key2"], ["key2", "key1"], ["key2"]]
    assert [s.name for s in result.steps] == ["add key2", "write with key2", "rewrite secrets", "remove key1"]
    _assert_finished(pki_dir, sim, "key2")


def test_without_the_two_steps_three_masters_would_lose_secrets(tmp_path: Path) -> None:
    """The control for the test above: the simulation does catch a write no other apiserver can read."""
    pki_dir = _pki(tmp_path)
    sim = SimCluster(pki_dir, THREE)
    one_step = encryption.Plan(encryption.Rotation("key1", "key2"), encryption.START, False, (THREE[0],))
    encryption.rotate(one_step, pki_dir, sim, EventBus(), timeout=5, interval=0)
    assert any("stored under key2" in problem for problem in sim.lost), sim.lost


def _calls_of_a_whole_rotation(tmp_path: Path, masters: tuple[str, ...]) -> int:
    pki_dir = _pki(tmp_path / "count")
    sim = SimCluster(pki_dir, masters)
    _rotate(pki_dir, sim)
    return sim.calls


@pytest.mark.parametrize("masters", [("master",), THREE], ids=["one master", "three masters"])
def test_a_rotation_stopped_at_any_call_resumes_and_finishes_when_run_again(
    tmp_path: Path, masters: tuple[str, ...]
) -> None:
    calls = _calls_of_a_whole_rotation(tmp_path, masters)
    assert calls > 10
    seen_stages = set()
    for stop in range(1, calls + 1):
        pki_dir = _pki(tmp_path / f"stop-{stop}")
        sim = SimCluster(pki_dir, masters)
        sim.interrupt_at = stop
        with pytest.raises(Interrupted):
            _rotate(pki_dir, sim)
        # What is left says where it stopped: the record of this rotation, a config of one of its steps, 0600.
        assert json.loads(encryption.record_path(pki_dir).read_text()) == {"old": "key1", "new": "key2"}
        assert _mode(encryption.record_path(pki_dir)) == 0o600
        assert _mode(encryption.config_path(pki_dir)) == 0o600
        resumed = encryption.plan(pki_dir, masters)
        assert resumed.resuming and resumed.rotation == encryption.Rotation("key1", "key2")
        seen_stages.add(resumed.stage)
        sim.interrupt_at = None
        result = encryption.rotate(resumed, pki_dir, sim, EventBus(), timeout=5, interval=0)
        assert result.resumed and (result.old, result.new) == ("key1", "key2")
        _assert_finished(pki_dir, sim, "key2")
    # The config is written before the first call to the cluster: no stop leaves the rotation at START.
    wanted = {encryption.PROMOTED, encryption.RETIRED}
    assert seen_stages == (wanted | {encryption.ADDED} if len(masters) > 1 else wanted)


@pytest.mark.parametrize("masters", [("master",), THREE], ids=["one master", "three masters"])
def test_a_rotation_stopped_before_its_first_key_was_written_resumes_with_the_recorded_names(
    tmp_path: Path, masters: tuple[str, ...]
) -> None:
    pki_dir = _pki(tmp_path)
    encryption.write_record(pki_dir, encryption.Rotation("key1", "key2"))
    resumed = encryption.plan(pki_dir, masters)
    assert (resumed.stage, resumed.resuming) == (encryption.START, True)
    sim = SimCluster(pki_dir, masters)
    encryption.rotate(resumed, pki_dir, sim, EventBus(), timeout=5, interval=0)
    _assert_finished(pki_dir, sim, "key2")


def test_a_wait_that_runs_out_names_what_it_waited_for_and_the_rerun_resumes(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    sim = SimCluster(pki_dir, reload_after={"master": 10**6})  # the apiserver never re-reads the file
    with pytest.raises(RotationError) as failed:
        _rotate(pki_dir, sim, timeout=0.2)
    message = failed.value.message()
    assert "waited 0s for the apiserver on master to load the config with keys key2, key1" in message
    assert "runs config" in message and "journalctl -u kube-apiserver" in message and "resumes" in message
    assert sim.lost == []
    sim.reload_after["master"] = 1
    sim.countdown["master"] = 1
    result = _rotate(pki_dir, sim)
    assert result.resumed
    _assert_finished(pki_dir, sim, "key2")


def test_conflicts_with_another_writer_are_written_again_in_the_next_round(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    sim = SimCluster(pki_dir)  # default/busy is updated on every call, between the list and the replace too
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    _rotate(pki_dir, sim, bus)
    progress = [str(getattr(e, "message", "")) for e in recorder.events]
    assert any("2 of 3 Secret(s) written again; 1 Conflict, tried again" in m for m in progress), progress
    _assert_finished(pki_dir, sim, "key2")


class StubbornSim(SimCluster):
    """default/app can never be replaced (an admission webhook refusing it, say)."""

    def replace(self, items: Any) -> tuple[str, str]:
        out, err = super().replace([i for i in items if i["metadata"]["name"] != "app"])
        if any(i["metadata"]["name"] == "app" for i in items):
            err += 'Error from server (Forbidden): error when replacing "STDIN": admission webhook denied it\n'
        return out, err


def test_the_old_key_stays_while_any_secret_is_still_under_it(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    sim = StubbornSim(pki_dir)
    with pytest.raises(RotationError) as failed:
        _rotate(pki_dir, sim)
    assert "Secrets secretbox:key1: default/app" in failed.value.message()
    assert "after 5 rounds of kubectl replace" in failed.value.message()
    assert _keys(pki_dir) == ["key2", "key1"]  # nothing removed
    assert sim.running_keys("master") == ["key2", "key1"]
    assert encryption.record_path(pki_dir).exists() and sim.lost == []


def test_an_aescbc_cluster_ends_with_only_the_new_secretbox_key_and_identity(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    old = {"aescbc": {"keys": [{"name": "key1", "secret": base64.b64encode(os.urandom(32)).decode()}]}}
    doc = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration"}
    doc["resources"] = [{"resources": ["secrets"], "providers": [old, {"identity": {}}]}]  # type: ignore[assignment]
    encryption.write_config(pki_dir, doc)
    assert encryption.ensure_config(pki_dir) is True  # a secretbox key first, aescbc kept for reading
    assert [list(p) for p in _doc(pki_dir)["resources"][0]["providers"]] == [["secretbox"], ["aescbc"], ["identity"]]
    sim = SimCluster(pki_dir)
    result = _rotate(pki_dir, sim)
    assert (result.old, result.new) == ("secretbox-1", "key2")
    assert [list(p) for p in _doc(pki_dir)["resources"][0]["providers"]] == [["secretbox"], ["identity"]]
    _assert_finished(pki_dir, sim, "key2")


def test_no_key_material_reaches_an_event_an_error_or_the_record(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    old_secret = _secret_of(pki_dir, "key1")
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    texts: list[str] = []
    sim = SimCluster(pki_dir, reload_after={"master": 10**6})
    with pytest.raises(RotationError) as failed:
        _rotate(pki_dir, sim, bus, timeout=0.1)
    texts.append(failed.value.message())
    new_secret = _secret_of(pki_dir, "key2")
    texts.append(encryption.record_path(pki_dir).read_text())
    sim.reload_after["master"], sim.countdown["master"] = 1, 1
    result = _rotate(pki_dir, sim, bus)
    texts += [repr(result), *(repr(e) for e in recorder.events)]
    assert len(recorder.events) > 10
    for secret in (old_secret, new_secret):
        raw = base64.b64decode(secret)
        for text in texts:
            assert secret not in text and raw.hex() not in text and repr(raw) not in text


# --- the plan and its errors -----------------------------------------------------------------------------


def test_plan_reads_and_writes_nothing(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    before = {p.name: p.read_bytes() for p in pki_dir.iterdir()}
    planned = encryption.plan(pki_dir, ["master"])
    assert (planned.rotation, planned.stage, planned.resuming) == (encryption.Rotation("key1", "key2"), "start", False)
    assert planned.question("lab") == (
        "rotate cluster lab's Secret encryption key: a new key key2 on master, every Secret written again with it, "
        "then key1 removed?"
    )
    assert {p.name: p.read_bytes() for p in pki_dir.iterdir()} == before


def test_a_cluster_that_was_never_brought_up_is_told_so(tmp_path: Path) -> None:
    with pytest.raises(EncryptionConfigError) as failed:
        encryption.plan(tmp_path / "pki", ["master"])
    assert failed.value.message() == (
        f"{tmp_path / 'pki' / 'encryption-config.yaml'}: does not exist: the cluster's PKI was never made; "
        "bring the cluster up with `provisioner up`"
    )


def test_two_keys_and_no_record_name_both_ways_out(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    doc = _doc(pki_dir)
    added = {"name": "key7", "secret": encryption.new_secret()}
    encryption.write_config(
        pki_dir, encryption.with_secretbox_keys(doc, [added, *doc["resources"][0]["providers"][0]["secretbox"]["keys"]])
    )
    with pytest.raises(EncryptionConfigError) as failed:
        encryption.plan(pki_dir, ["master"])
    message = failed.value.message()
    assert "holds 2 secretbox keys (key7, key1) but no rotation is recorded in encryption-rotation.json" in message
    assert '{"old": "key1", "new": "key7"}' in message and "put back the file with one key" in message
    # Doing what it says lets the rotation finish.
    encryption.record_path(pki_dir).write_text('{"old": "key1", "new": "key7"}')
    sim = SimCluster(pki_dir)
    assert _rotate(pki_dir, sim).resumed
    _assert_finished(pki_dir, sim, "key7")


def test_a_config_that_is_no_step_of_the_recorded_rotation_is_refused(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    encryption.write_record(pki_dir, encryption.Rotation("key4", "key5"))
    with pytest.raises(EncryptionConfigError) as failed:
        encryption.plan(pki_dir, ["master"])
    assert "holds the secretbox keys key1, which is no step of the rotation key4 -> key5" in failed.value.message()


def test_a_broken_config_is_reported_without_quoting_it(tmp_path: Path) -> None:
    pki_dir = _pki(tmp_path)
    secret = _secret_of(pki_dir, "key1")
    encryption.config_path(pki_dir).write_text(f"resources:\n  - providers: [secretbox: {{keys: [{secret}\n")
    with pytest.raises(EncryptionConfigError) as failed:
        encryption.plan(pki_dir, ["master"])
    assert "is not valid YAML (line" in failed.value.message()
    assert secret not in failed.value.message()
    encryption.config_path(pki_dir).write_text(yaml.safe_dump({"resources": [{"providers": [{"aesgcm": {}}]}]}))
    with pytest.raises(EncryptionConfigError) as failed:
        encryption.plan(pki_dir, ["master"])
    assert "its first provider is aesgcm, not secretbox with named keys; run `provisioner up`" in failed.value.message()


# --- what etcd and the apiserver answer ------------------------------------------------------------------


def test_the_etcd_listing_says_which_key_each_secret_is_stored_under() -> None:
    # Recorded from etcdctl v3.6 against a kube-apiserver v1.37.2 that wrote a and b with key1 and, restarted
    # with [key2, key1], c with key2; default/plain was put in by hand as an unencrypted protobuf.
    stored = encryption.stored_under((DATA / "etcdctl-secrets.json").read_bytes())
    assert stored == {
        "default/a": "secretbox:key1",
        "kube-system/b": "secretbox:key1",
        "default/c": "secretbox:key2",
        "default/plain": encryption.PLAIN,
    }
    empty = (
        b'{"header":{"cluster_id":17499876411948027565,"member_id":1285669254908119382,"revision":229,"raft_term":2}}\n'
    )
    assert encryption.stored_under(empty) == {}
    assert encryption.describe({k: v for k, v in stored.items() if v != "secretbox:key2"}) == (
        "plain text: default/plain; secretbox:key1: default/a, kube-system/b"
    )


@pytest.mark.parametrize(
    ("raw", "how"),
    [
        (b"k8s:enc:secretbox:v1:key2:\x00\x01binary:with:colons", "secretbox:key2"),
        (b"k8s:enc:aescbc:v1:key1:ciphertext", "aescbc:key1"),
        (b"k8s:enc:kms:v2:vault:\x0a\x02", "kms:vault"),
        (b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret", encryption.PLAIN),
        (b'{"kind":"Secret"}', encryption.PLAIN),
        (b"k8s:enc:secretbox", "an unreadable envelope"),
    ],
)
def test_an_envelope_names_its_provider_and_key(raw: bytes, how: str) -> None:
    assert encryption.envelope(raw) == how


def test_the_apiserver_s_metric_says_which_config_file_it_runs_with() -> None:
    # Recorded from kube-apiserver v1.37.2 (its config file's sha256 was dcacd64a...).
    hashes = encryption.loaded_hashes((DATA / "apiserver-metrics-encryption.txt").read_text())
    assert hashes == ["sha256:dcacd64a5a2256f207810e6c26092709b1a4eacacfa822747603bcad719e0877"]
    data = b"apiVersion: apiserver.config.k8s.io/v1\n"
    digest = hashlib.sha256(data).hexdigest()
    for form in (digest, f"sha256:{digest}", f"k8s:enc:unstable:1:{digest}"):
        assert encryption.runs_config([form], data)
    assert not encryption.runs_config(hashes, data)
    assert not encryption.runs_config([], data)


def test_kubectl_replace_output_is_counted_and_its_errors_never_quoted() -> None:
    out = "secret/a replaced\nsecret/b replaced\n"
    err = (
        'Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on secrets "c"\n'
        'Error from server (NotFound): error when replacing "STDIN": secrets "d" not found\n'
        'Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on secrets "e"\n'
    )
    assert encryption.replaced_count(out) == 2
    assert encryption.replace_errors(err) == "2 Conflict, 1 NotFound"
    assert encryption.replace_errors("error: unable to decode STDIN\n") == "1 other error(s)"


# --- site.yml's play for the file, with real Ansible -----------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the play installs a file owned by root")
def test_the_push_installs_the_encryption_config_and_nothing_else_0600_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runner.STRATEGY_ENV, "linear")
    pki_dir = _pki(tmp_path)
    (pki_dir / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
    node = tmp_path / "node"
    (node / "pki").mkdir(parents=True)
    inventory = {"all": {"children": {"masters": {"hosts": {"master": {"certs_dir": str(node)}}}}}}
    inventory["all"]["vars"] = {"pki_dir": str(pki_dir)}  # type: ignore[index]
    state = localnode.local_state(tmp_path / "state", inventory)
    assert state.inventory_file.is_file()
    first = encryption.push_config(state, EventBus())
    installed = node / "encryption-config.yaml"
    assert installed.read_bytes() == encryption.config_path(pki_dir).read_bytes()
    assert (_mode(installed), installed.stat().st_uid, installed.stat().st_gid) == (0o600, 0, 0)
    assert first.hosts["master"].changed == 1
    assert sorted(p.name for p in node.rglob("*")) == ["encryption-config.yaml", "pki"]  # no ca.crt: not this play
    assert encryption.push_config(state, EventBus()).hosts["master"].changed == 0
    assert f"{layout.DIRS.kube}/{encryption.CONFIG_FILE}" == layout.ENCRYPTION_CONFIG


def test_site_yml_s_tagged_play_installs_exactly_the_encryption_config_on_masters() -> None:
    plays = yaml.safe_load(runner.SITE.read_text())
    tagged = [p for p in plays if encryption.PUSH_TAG in (p.get("tags") or [])]
    assert [(p["hosts"], p["roles"][0]["role"]) for p in tagged] == [("masters", "certs")]
    files = tagged[0]["roles"][0]["vars"]["certs_files"]
    assert files == [{"src": encryption.CONFIG_FILE, "dest": encryption.CONFIG_FILE, "secret": True}]
    others = [
        f["src"] for p in plays if p not in tagged for r in p["roles"] for f in r.get("vars", {}).get("certs_files", [])
    ]
    assert encryption.CONFIG_FILE not in others  # one play installs it
