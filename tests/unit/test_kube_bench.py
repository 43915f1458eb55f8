"""bench/kube_bench.py without a lab: what reaches a node, what runs there, and how its report is read.

The two recorded reports (tests/unit/data/kube-bench-*.json) are kube-bench v0.15.6's own JSON, run on
this development machine with security/kube-bench/config.yaml and --benchmark cis-1.12, inside a private
mount and pid namespace holding what the roles install: the unit files, kubelet and kube-proxy
configurations rendered from the templates with the tasks' modes, placeholder certificates and
kubeconfigs (a made-up client-key-data), and stand-in processes under the units' own command lines. They
are sample output for the parser, not the lab's result.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import layout, paths
from provisioner.hosts import HostConnection
from provisioner.verify.kube import Ssh

sys.path.insert(0, str(paths.REPO_ROOT / "bench"))

import kube_bench

DATA = Path(__file__).parent / "data"


def _report(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"kube-bench-{name}.json").read_text())
    return data


def _check(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    checks = (c for controls in report["Controls"] for g in controls["tests"] for c in g["results"])
    return next(c for c in checks if c["test_number"] == check_id)


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """A kube-bench directory as the runner expects it; the binary is a stand-in that records how it ran."""
    root = tmp_path / "tool"
    (root / "cfg" / kube_bench.BENCHMARK).mkdir(parents=True)
    (root / "cfg" / "cis-1.11").mkdir()
    for target in ("master", "node", "config"):
        (root / "cfg" / kube_bench.BENCHMARK / f"{target}.yaml").write_text(f"{target}: checks\n")
    (root / "cfg" / "cis-1.11" / "node.yaml").write_text("older: checks\n")
    (root / "cfg" / "config.yaml").write_text("upstream: config\n")
    fake = root / "kube-bench"
    # Writes its arguments, working directory and what it found there as its --outputfile report.
    fake.write_text(
        "#!/bin/sh\n"
        'out=""; prev=""\n'
        'for a in "$@"; do [ "$prev" = --outputfile ] && out=$a; prev=$a; done\n'
        'printf \'{"argv": "%s", "cwd": "%s", "kubeconfig": "%s", "files": "%s"}\' '
        '"$*" "$PWD" "${KUBECONFIG:-}" "$(find . -type f | sort | tr "\\n" " ")" > "$out"\n'
    )
    fake.chmod(0o755)
    return root


def test_the_bundle_holds_kube_bench_its_benchmark_and_our_overlay_and_unpacks_with_tar(
    tool: Path, tmp_path: Path
) -> None:
    payload = kube_bench.bundle(tool)
    assert payload == kube_bench.bundle(tool), "the same files give the same bytes"
    out = tmp_path / "out"
    out.mkdir()
    # The same tar command the remote script runs.
    subprocess.run(["tar", "-xzf", "-", "-C", str(out)], input=payload, check=True)
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    bench = kube_bench.BENCHMARK
    checks = [f"cfg/{bench}/config.yaml", f"cfg/{bench}/master.yaml", f"cfg/{bench}/node.yaml"]
    assert found == [*checks, "config.yaml", "kube-bench"], "only the pinned benchmark's checks travel"
    assert (out / "config.yaml").read_bytes() == kube_bench.OVERLAY.read_bytes()
    assert (out / "kube-bench").stat().st_mode & 0o777 == 0o755


def test_the_ssh_command_reaches_the_node_under_the_lab_prefix_and_sudo_for_a_non_root_user() -> None:
    host = HostConnection("worker-1", "worker", "192.168.56.11", "10.1.2.3", 22, "vagrant", Path("/k"))
    ssh = Ssh({host.name: host}, ["ip", "netns", "exec", "prov-lab"], ["-o", "BatchMode=yes"])
    script = kube_bench.remote_script(kube_bench.TARGETS["worker"])
    argv = ssh.command(host.name, script)
    assert argv[:5] == ["ip", "netns", "exec", "prov-lab", "ssh"]
    assert argv[-3:-1] == ["--", "10.1.2.3"]
    assert argv[-1].startswith("sudo -n sh -c ")
    assert argv[argv.index("-l") + 1] == "vagrant"


@pytest.mark.parametrize("role", ["master", "worker"])
def test_the_remote_script_runs_kube_bench_on_our_overlay_and_removes_its_scratch_dir(role: str, tool: Path) -> None:
    kubeconfig = kube_bench.ADMIN_KUBECONFIG if role == "master" else None
    script = kube_bench.remote_script(kube_bench.TARGETS[role], kubeconfig=kubeconfig)
    # dash, as a node's sh (and sudo's `sh -c`) is.
    shell = shutil.which("dash") or "sh"
    proc = subprocess.run([shell, "-c", script], input=kube_bench.bundle(tool), capture_output=True, check=True)
    ran = json.loads(proc.stdout)
    scratch = ran["cwd"]
    assert scratch.startswith("/tmp/kube-bench.")
    assert not Path(scratch).exists(), "the scratch directory outlives the run"
    targets = ",".join(kube_bench.TARGETS[role])
    assert ran["argv"] == (
        f"run --targets {targets} --benchmark cis-1.12 --config {scratch}/config.yaml --config-dir {scratch}/cfg "
        f"--json --outputfile {scratch}/report.json"
    )
    assert ran["kubeconfig"] == (kubeconfig or "")
    assert "./config.yaml" in ran["files"].split() and "./cfg/cis-1.12/node.yaml" in ran["files"].split()


def test_a_failing_kube_bench_fails_the_remote_script_and_still_removes_the_scratch_dir(tool: Path) -> None:
    (tool / "kube-bench").write_text('#!/bin/sh\necho "$PWD" >&2\nexit 1\n')
    script = kube_bench.remote_script(kube_bench.TARGETS["worker"])
    proc = subprocess.run(["sh", "-c", script], input=kube_bench.bundle(tool), capture_output=True, check=False)
    assert proc.returncode != 0
    assert proc.stdout == b""
    assert not Path(proc.stderr.decode().strip()).exists()


def test_the_node_report_sums_up_per_target_with_every_fail() -> None:
    [node] = kube_bench.summarise("worker-1", _report("node"), ["node"])
    assert node.target == "node"
    assert node.counts == {"PASS": 18, "FAIL": 3, "WARN": 4, "INFO": 0}
    assert [f.id for f in node.fails] == ["4.1.1", "4.1.9", "4.2.10"]
    assert all(f.scored for f in node.fails)
    assert node.fails[0].text.startswith("Ensure that the kubelet service file permissions are set to 600")
    assert kube_bench.exit_status([node]) == 1


def test_a_report_with_warnings_only_exits_zero() -> None:
    summaries = kube_bench.summarise("master", _report("etcd-controlplane"), ["etcd", "controlplane"])
    assert [(s.target, s.counts) for s in summaries] == [
        ("etcd", {"PASS": 7, "FAIL": 0, "WARN": 0, "INFO": 0}),
        ("controlplane", {"PASS": 0, "FAIL": 0, "WARN": 5, "INFO": 0}),
    ]
    assert kube_bench.exit_status(summaries) == 0


def test_a_failing_manual_check_does_not_fail_the_run() -> None:
    report = _report("etcd-controlplane")
    check = _check(report, "2.7")
    check.update(status="FAIL", scored=False)
    etcd = report["Controls"][0]
    etcd.update(total_pass=etcd["total_pass"] - 1, total_fail=1)
    summaries = kube_bench.summarise("master", report, ["etcd"])
    assert [f.id for f in summaries[0].fails] == ["2.7"]
    assert kube_bench.exit_status(summaries) == 0
    assert "FAIL master 2.7     [manual]" in kube_bench.render(summaries)


def test_counts_that_disagree_with_kube_benchs_totals_are_an_error() -> None:
    report = _report("node")
    _check(report, "4.1.2")["status"] = "FAIL"
    with pytest.raises(kube_bench.ReportError, match="totals"):
        kube_bench.summarise("worker-1", report, ["node"])


def test_a_target_missing_from_the_report_is_an_error() -> None:
    with pytest.raises(kube_bench.ReportError, match="policies"):
        kube_bench.summarise("master", _report("etcd-controlplane"), ["etcd", "controlplane", "policies"])


def test_the_table_lists_each_target_and_each_fail() -> None:
    text = kube_bench.render(kube_bench.summarise("worker-1", _report("node"), ["node"]))
    lines = text.splitlines()
    assert lines[0].split() == ["node", "target", "PASS", "FAIL", "WARN", "INFO"]
    assert lines[1].split() == ["worker-1", "node", "18", "3", "4", "0"]
    assert [line.split()[2] for line in lines if line.startswith("FAIL ")] == ["4.1.1", "4.1.9", "4.2.10"]


def test_the_kube_proxy_kubeconfig_check_4_3_1_leaves_no_key_in_the_report() -> None:
    report = _report("node")
    printed = _check(report, "4.3.1")["actual_value"]
    assert "client-key-data: U0lNVUxBVEVEIEtFWQ==" in printed, "the recording shows what kube-bench prints"
    clean = kube_bench.redact(report)
    assert "U0lNVUxBVEVEIEtFWQ==" not in json.dumps(clean)
    assert "client-key-data: <redacted>" in _check(clean, "4.3.1")["actual_value"]
    assert "client-certificate-data: U0lNVUxBVEVEIENFUlQ=" in _check(clean, "4.3.1")["actual_value"]
    assert _check(clean, "4.2.10") == _check(report, "4.2.10"), "nothing else changes"
    assert kube_bench.summarise("w", clean, ["node"])[0].counts == kube_bench.summarise("w", report, ["node"])[0].counts


def test_pem_private_keys_and_go_quoted_secrets_are_redacted() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"
    reason = 'failed to run: "cat x", output: "users:\\n- user:\\n    token: abc.def\\n", error: exit status 1'
    clean = kube_bench.redact({"a": [pem, reason], "b": 3})
    assert clean["a"][0] == "<redacted>"
    assert "abc.def" not in clean["a"][1] and "token: <redacted>\\n" in clean["a"][1]
    assert clean["b"] == 3


# The overlay against the project: each path it names is one the playbooks write on that role's nodes.


def _overlay() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(kube_bench.OVERLAY.read_text())
    return data


def _installed(role: str) -> set[str]:
    """Files the playbooks put on a node of this role: units, configurations, PKI files and kubeconfigs."""
    site = yaml.safe_load((paths.REPO_ROOT / "playbooks" / "site.yml").read_text())
    plays = [p for p in site if p["name"].startswith("PKI: ") and p["hosts"] == f"{role}s"]
    certs = {f"{layout.DIRS.kube}/{f['dest']}" for p in plays for f in p["roles"][0]["vars"]["certs_files"]}
    units = {f"{layout.DIRS.units}/{u.name}.service" for u in layout.units_for(role)}
    configs = {
        "master": {f"{layout.DIRS.kube}/kube-scheduler.yaml", layout.DIRS.etcd_data},
        "worker": {f"{layout.DIRS.kubelet}/config.yaml", f"{layout.DIRS.kube_proxy}/config.yaml"},
    }[role]
    return certs | units | configs


def _named_paths(section: dict[str, Any]) -> set[str]:
    keys = ("confs", "kubeconfig", "svc", "cafile", "datadirs")
    defaults = ("defaultconf", "defaultkubeconfig", "defaultsvc", "defaultcafile", "defaultdatadir")
    named = set()
    for component in section["components"]:
        entry = section.get(component, {})
        named |= {p for k in keys for p in entry.get(k, [])} | {entry[k] for k in defaults if k in entry}
    return named


@pytest.mark.parametrize(("section", "role"), [("master", "master"), ("etcd", "master"), ("node", "worker")])
def test_the_overlay_names_only_files_the_playbooks_install_on_that_role(section: str, role: str) -> None:
    named = _named_paths(_overlay()[section])
    assert named, f"the {section} section names no files"
    assert named <= _installed(role), f"not installed on a {role}: {sorted(named - _installed(role))}"


def test_the_overlay_points_the_pod_specification_checks_at_our_units() -> None:
    overlay = _overlay()
    units = layout.DIRS.units
    for component, unit in [
        ("apiserver", "kube-apiserver"),
        ("controllermanager", "kube-controller-manager"),
        ("scheduler", "kube-scheduler"),
        ("etcd", "etcd"),
    ]:
        assert overlay["master"][component]["confs"] == [f"{units}/{unit}.service"]
        assert overlay["master"][component]["bins"] == [unit]
    assert overlay["node"]["kubelet"]["svc"] == [f"{units}/kubelet.service"]
    assert overlay["node"]["proxy"]["svc"] == [f"{units}/kube-proxy.service"]


def test_the_overlay_binaries_are_the_ones_the_units_run() -> None:
    overlay = _overlay()
    binaries = {u.binary.removeprefix("bin/") for u in layout.UNITS if u.binary}
    for section in ("master", "etcd", "controlplane", "node"):
        for component in overlay[section]["components"]:
            bins = overlay[section][component]["bins"]
            # The master's kubelet entry is optional: only checks 1.1.9-1.1.10 name it, and no master runs one.
            assert set(bins) <= binaries | {"kubelet"}, f"{section}.{component}: {bins}"


def test_the_admin_kubeconfig_the_policies_target_reads_is_installed_on_masters() -> None:
    assert kube_bench.ADMIN_KUBECONFIG in _installed("master")


def test_the_overlay_allows_the_runners_targets_for_the_pinned_benchmark() -> None:
    overlay = _overlay()
    allowed = overlay["target_mapping"][kube_bench.BENCHMARK]
    assert {t for targets in kube_bench.TARGETS.values() for t in targets} <= set(allowed)
    assert overlay["version_mapping"]["1.32"] == kube_bench.BENCHMARK


def test_the_services_checked_before_a_run_are_the_units_with_a_binary() -> None:
    master = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    assert kube_bench.required_units("master") == master
    assert kube_bench.required_units("worker") == ["containerd", "kubelet", "kube-proxy"]


def test_the_recorded_report_is_left_unchanged_by_redact() -> None:
    report = _report("etcd-controlplane")
    before = copy.deepcopy(report)
    kube_bench.redact(report)
    assert report == before
