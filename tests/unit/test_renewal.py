"""`provisioner certs renew` before any node is touched: which certificates, refused requests, new serials and
keys from the same CA, rolling or all at once, and the check that finds a copy left behind."""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
from pathlib import Path

import localnode
import pytest
import yaml
from cryptography import x509
from typer.testing import CliRunner

from provisioner import certs, inventory, layout, lifecycle, paths, pki, renewal, runner, spec
from provisioner.cli import app
from provisioner.events import EventBus
from provisioner.state import State


@pytest.fixture
def now() -> datetime.datetime:
    """This test's now: certificates are issued backdated a few minutes, so a module-wide one goes stale."""
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture
def cluster() -> spec.Cluster:
    return spec.load(paths.default_spec())


@pytest.fixture
def issued(cluster: spec.Cluster, tmp_path: Path) -> State:
    state = State(tmp_path / "state")
    pki.ensure(cluster, state)
    return state


def _facts(state: State, name: str) -> certs.CertFacts:
    return certs.read_pem((state.pki_dir / f"{name}.crt").read_bytes())[0]


def _snapshot(state: State) -> dict[str, bytes]:
    return {str(p.relative_to(state.pki_dir)): p.read_bytes() for p in sorted(state.pki_dir.rglob("*")) if p.is_file()}


def test_all_is_every_leaf_and_names_are_kept_in_order_without_repeats(cluster: spec.Cluster) -> None:
    leaves = renewal.choose(cluster, [], everything=True)
    assert leaves == tuple(c.name for c in pki.cluster_certs(cluster))
    assert "ca" not in leaves and "etcd-ca" not in leaves and "apiserver" in leaves and "kubelet-worker-1" in leaves
    assert renewal.choose(cluster, ["admin", "apiserver", "admin"], everything=False) == ("admin", "apiserver")


@pytest.mark.parametrize(
    ("names", "everything", "said"),
    [
        (["apiserverr"], False, "certs renew apiserverr: is not a certificate of cluster lab; use one of: "),
        (["kubelet-worker-9"], False, "certs renew kubelet-worker-9: is not a certificate of cluster lab"),
        (["ca"], False, "certs renew ca: is a CA"),
        (["etcd-ca"], False, "certs renew etcd-ca: is a CA"),
        (["admin"], True, "takes --all or certificate names, not both"),
        ([], False, "names no certificate; give --all, or one or more of: "),
    ],
)
def test_a_bad_request_is_refused_with_the_name_and_the_fix(
    cluster: spec.Cluster, names: list[str], everything: bool, said: str
) -> None:
    with pytest.raises(renewal.RenewError) as refused:
        renewal.choose(cluster, names, everything)
    assert said in refused.value.message()


def test_a_renewed_leaf_gets_a_new_key_and_serial_from_the_same_ca_and_nothing_else_changes(
    cluster: spec.Cluster, issued: State
) -> None:
    before = _snapshot(issued)
    old = _facts(issued, "apiserver")
    result = pki.ensure(cluster, issued, renew=("apiserver", "admin"))
    after = _snapshot(issued)
    new = _facts(issued, "apiserver")
    assert new.serial != old.serial and new.identity == old.identity and new.not_after >= old.not_after
    assert (
        x509.load_pem_x509_certificate(after["apiserver.crt"]).verify_directly_issued_by(
            x509.load_pem_x509_certificate(after["ca.crt"])
        )
        is None
    )
    changed = sorted(name for name in after if after[name] != before.get(name))
    # The two leaves, their keys, and the kubeconfigs that embed the admin's client certificate.
    assert changed == [
        "admin.crt",
        "admin.key",
        "apiserver.crt",
        "apiserver.key",
        "kubeconfigs/admin-local.kubeconfig",
        "kubeconfigs/admin.kubeconfig",
    ], changed
    assert set(result.issued) >= {"apiserver", "admin", "admin.kubeconfig", "admin-local.kubeconfig"}


def test_leaves_can_be_issued_as_of_a_time_past_so_that_they_have_expired(
    now: datetime.datetime, cluster: spec.Cluster, issued: State
) -> None:
    """How the lab test makes a cluster whose certificates expired while it was off."""
    short = cluster.model_copy(
        update={"spec": cluster.spec.model_copy(update={"pki": spec.PkiSpec(leafValidity="2h", renewBefore="30m")})}
    )
    past = now - datetime.timedelta(hours=3)
    pki.ensure(short, issued, now=past, renew=renewal.choose(short, [], everything=True))
    assert all(_facts(issued, c.name).not_after < now for c in pki.cluster_certs(short))
    assert _facts(issued, "ca").not_after > now + datetime.timedelta(days=3000)


def _found(where: str, file: str, cert: certs.CertFacts) -> certs.Found:
    return certs.Found(where, file, cert)


def test_rolling_unless_an_installed_certificate_is_out_of_its_validity(
    now: datetime.datetime, cluster: spec.Cluster, issued: State
) -> None:
    names = ("apiserver",)
    good = _found("master-1", "pki/apiserver.crt", _facts(issued, "apiserver"))
    assert renewal.plan(cluster, issued, names, [good], now).rolling
    later = now + datetime.timedelta(days=400)
    planned = renewal.plan(cluster, issued, names, [good], later)
    assert not planned.rolling and planned.expired == (good,)
    assert "all at once" in planned.describe() and "pki/apiserver.crt on master-1" in planned.describe()
    # The admin machine's own copies are not what the components present to each other.
    admin = _found(certs.ADMIN, str(issued.pki_dir / "apiserver.crt"), _facts(issued, "apiserver"))
    assert renewal.plan(cluster, issued, names, [admin], later).rolling


def test_a_node_that_cannot_be_read_or_a_cluster_never_brought_up_is_refused(
    now: datetime.datetime, cluster: spec.Cluster, issued: State, tmp_path: Path
) -> None:
    down = certs.Unreadable("worker-2", "(node)", "ssh: connect to host 192.168.56.12 port 22: No route to host")
    with pytest.raises(renewal.RenewError) as refused:
        renewal.plan(cluster, issued, ("apiserver",), [down], now)
    assert "worker-2 ((node): ssh: connect" in refused.value.message() and "start the node" in refused.value.message()
    with pytest.raises(renewal.RenewError) as never:
        renewal.plan(cluster, State(tmp_path / "empty"), ("apiserver",), [], now)
    assert "it was never brought up" in never.value.message()


def test_a_copy_left_behind_is_found_and_look_alike_leaves_are_not_mistaken_for_it(
    now: datetime.datetime, cluster: spec.Cluster, issued: State
) -> None:
    # A lone etcd member's server and peer certificates have the same subject, issuer and names.
    server_old, peer = _facts(issued, "etcd-server"), _facts(issued, "etcd-peer")
    assert server_old.identity == peer.identity
    pki.ensure(cluster, issued, renew=("etcd-server",))
    current = [_facts(issued, name) for name in pki.leaf_names(cluster)]
    server_new = _facts(issued, "etcd-server")
    installed = [
        _found("master-1", "pki/etcd-server.crt", server_new),
        _found("master-1", "pki/etcd-peer.crt", peer),  # not renewed: still current
    ]
    assert renewal.stale(installed, current, [server_new], now) == []
    left_behind = _found("master-1", "pki/etcd-server.crt", server_old)
    assert renewal.stale([*installed, left_behind], current, [server_new], now) == [left_behind]


def test_the_kubelets_own_certificate_is_new_when_signed_after_the_renewal_began(
    cluster: spec.Cluster, issued: State
) -> None:
    """A kubelet given a new kubeconfig at once asks the controller-manager for a certificate of its own."""
    old = _facts(issued, "kubelet-worker-1")
    began = datetime.datetime.now(datetime.UTC)
    pki.ensure(cluster, issued, renew=("kubelet-worker-1",))
    new = _facts(issued, "kubelet-worker-1")
    current = [_facts(issued, name) for name in pki.leaf_names(cluster)]
    signed = dataclasses.replace(new, serial=new.serial + 1)  # same subject, another serial: the signer's
    rotated = _found("worker-1", layout.KUBELET_ROTATED_CLIENT, signed)
    assert renewal.stale([rotated], current, [new], began) == []
    before = dataclasses.replace(old, serial=old.serial)
    kept = _found("worker-1", layout.KUBELET_ROTATED_CLIENT, before)  # one it had renewed before: stale
    assert renewal.stale([kept], current, [new], began + datetime.timedelta(minutes=10)) == [kept]


def test_the_node_script_shows_the_kubelets_own_renewed_certificate_and_never_its_key(
    issued: State, tmp_path: Path
) -> None:
    rotated = tmp_path / "kubelet-pki" / "kubelet-client-current.pem"
    rotated.parent.mkdir()
    # What the kubelet writes: its certificate and its private key in one file.
    rotated.write_bytes(
        (issued.pki_dir / "kubelet-worker-1.crt").read_bytes() + (issued.pki_dir / "kubelet-worker-1.key").read_bytes()
    )
    script = certs.node_script(str(tmp_path / "no-kube-dir"), str(rotated))
    shown = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, timeout=30).stdout
    assert "PRIVATE KEY" not in shown
    found = certs.parse_node_output("worker-1", shown)
    assert [(f.file, f.cert.name) for f in found if isinstance(f, certs.Found)] == [
        (str(rotated), "system:node:worker-1 (system:nodes)")
    ]


def test_the_plays_that_restart_services_take_the_rolling_batch_size() -> None:
    plays = yaml.safe_load((runner.PLAYBOOK_DIR / "site.yml").read_text())
    serial = {p["name"]: p.get("serial") for p in plays}
    rolling = f"{{{{ {lifecycle.ROLLING_VAR} | default('100%') }}}}"
    restarting = {"Etcd: masters", "Workers: workers"}
    assert {name for name, value in serial.items() if value == rolling} == restarting
    # The control plane goes one master at a time even in a full run: each apiserver ready before the next.
    one_by_one = f"{{{{ {lifecycle.ROLLING_VAR} | default(1) }}}}"
    assert serial["Control plane: masters"] == one_by_one
    restarting.add("Control plane: masters")
    # Nothing else runs in batches: a new cluster's etcd members must start together.
    assert {name: value for name, value in serial.items() if name not in restarting and value is not None} == {}


def test_the_controller_manager_signs_for_as_long_as_the_spec_gives_a_leaf(cluster: spec.Cluster) -> None:
    unit = (runner.PLAYBOOK_DIR / "roles/control_plane/templates/kube-controller-manager.service.j2").read_text()
    assert "--cluster-signing-duration={{ pki_leaf_seconds }}s" in unit
    got = inventory.group_vars(cluster, State(Path("/nonexistent")), Path("/nonexistent"))
    assert got["pki_leaf_seconds"] == 365 * 86400


def test_the_cli_refuses_an_unknown_name_before_anything_changes(
    issued: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(State, "for_cluster", classmethod(lambda cls, name: issued))
    before = _snapshot(issued)
    done = CliRunner().invoke(app, ["certs", "renew", "apiserverr"])
    assert done.exit_code == 1, done.output
    assert "apiserverr: is not a certificate of cluster lab" in done.output
    neither = CliRunner().invoke(app, ["certs", "renew"])
    assert neither.exit_code == 1 and "names no certificate" in neither.output
    assert _snapshot(issued) == before


# The kubelet role's handlers, notified as its unit task notifies them, on a certificate dir of this machine.
DROP_PLAY = """
- name: "Workers: local"
  hosts: all
  gather_facts: false
  vars:
    layout: {kubelet_cert_dir: "{{ cert_dir }}"}
  tasks:
    - name: A new unit
      ansible.builtin.copy:
        content: "{{ 1000000 | random }}"
        dest: "{{ cert_dir }}/../unit"
        mode: "0600"
      notify: Drop the client certificates the kubelet renewed itself
  handlers:
    - name: The kubelet role's handlers
      ansible.builtin.import_tasks: HANDLERS
"""


def test_a_new_kubelet_unit_drops_what_the_kubelet_renewed_itself_before_it_restarts(tmp_path: Path) -> None:
    role = runner.PLAYBOOK_DIR / "roles" / "kubelet"
    handlers = yaml.safe_load((role / "handlers" / "main.yml").read_text())
    drop = "Drop the client certificates the kubelet renewed itself"
    names = [h["name"] for h in handlers]
    # Handlers run in the order written: the renewed certificates are read, then dropped, then the kubelet restarts.
    assert names.index(drop) < names.index("Restart kubelet")
    assert [h["name"] for h in handlers if drop in (h["name"], h.get("listen"))] == [names[0], drop]
    unit = next(t for t in yaml.safe_load((role / "tasks" / "main.yml").read_text()) if t["name"] == "Systemd unit")
    assert unit["notify"] == [drop, "Restart kubelet"]

    # On a certificate dir as the kubelet leaves it: the link and what it points at go, in check mode too by name.
    cert_dir = tmp_path / "pki"
    cert_dir.mkdir()
    (cert_dir / "kubelet-client-2026-12-02-12-00-00.pem").write_text("cert and key")
    (cert_dir / "kubelet-client-current.pem").symlink_to(cert_dir / "kubelet-client-2026-12-02-12-00-00.pem")
    (cert_dir / "kubelet.crt").write_text("serving")
    state = localnode.local_state(
        tmp_path / "state",
        localnode.one_host("worker", cert_dir=str(cert_dir)),
        DROP_PLAY.replace("HANDLERS", str(role / "handlers" / "main.yml")),
    )

    def run(check: bool) -> list[runner.TaskChange]:
        result = runner.run_playbook(
            state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear", check=check
        )
        return [c for c in result.changes if c.handler]

    pems = sorted(str(p) for p in cert_dir.glob("kubelet-client-*.pem"))
    [planned] = run(check=True)
    assert (planned.task, sorted(planned.items)) == (drop, pems)
    assert len(list(cert_dir.iterdir())) == 3
    [dropped] = run(check=False)
    assert (dropped.task, sorted(dropped.items)) == (drop, pems)
    assert sorted(p.name for p in cert_dir.iterdir()) == ["kubelet.crt"]
    assert run(check=False) == []  # nothing left: reported unchanged
