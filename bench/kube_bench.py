"""The CIS Kubernetes Benchmark on the cluster with kube-bench: the master's checks and one worker's, summed up.

    .venv/bin/python bench/kube_bench.py [--spec FILE] [--worker NAME] [--kube-bench DIR]

kube-bench (pinned below: VERSION v0.15.6, BENCHMARK cis-1.12) is not in the artifact set: a static
linux/amd64 build of it and its cfg/ directory are expected in the cache, tools/kube-bench/v0.15.6/ under
$PROVISIONER_CACHE (default ~/.cache/provisioner), or in --kube-bench DIR. The binary, that benchmark's
cfg and our overlay (security/kube-bench/config.yaml, this project's paths) go to a scratch directory on
the master and on one worker as one tar over the ssh connection's standard input; kube-bench runs there
(master: master, etcd, controlplane and policies; the worker: node) and the scratch directory is removed
when the shell exits. Prints PASS/FAIL/WARN/INFO per node and target and every FAIL, and keeps each
node's whole JSON report (secrets redacted) under the cluster's state directory, reports/kube-bench-STAMP/.

Exit status: 0 when no automated (scored) check FAILs, 1 when one does, 2 when the benchmark could not run.
A script to run against the lab, not a timed test; the tar, the remote script and the summary have fast
tests in tests/unit/test_kube_bench.py.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import io
import json
import re
import shlex
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provisioner import hosts, layout, paths, providers, spec
from provisioner.errors import ProvisionerError, ToolMissing
from provisioner.events import EventBus
from provisioner.hosts import HostConnection
from provisioner.spec import StaticProvider
from provisioner.state import State
from provisioner.verify.kube import Ssh

VERSION = "v0.15.6"
# The newest CIS Kubernetes benchmark kube-bench VERSION carries (for Kubernetes 1.32 and later).
BENCHMARK = "cis-1.12"
# kube-bench targets per node role: the control plane's on the master, the node's on a worker.
TARGETS = {"master": ("master", "etcd", "controlplane", "policies"), "worker": ("node",)}
OVERLAY = paths.REPO_ROOT / "security" / "kube-bench" / "config.yaml"
# The policies target asks the API with kubectl; site.yml installs this kubeconfig on masters only.
ADMIN_KUBECONFIG = layout.ADMIN_CONF
# Copying 16 MB into an emulated VM and running a few dozen kubectl calls there takes minutes.
TIMEOUT = 1200.0


class ReportError(ProvisionerError):
    """kube-bench's JSON is not what this script understands."""


def tool_dir() -> Path:
    return paths.cache_root() / "tools" / "kube-bench" / VERSION


def check_tool(tool: Path, benchmark: str = BENCHMARK) -> None:
    """The kube-bench build is there, has the benchmark's checks and says it is the pinned version."""
    binary = tool / "kube-bench"
    fix = f"put a static linux/amd64 kube-bench {VERSION} and its cfg/ directory in {tool} (or pass --kube-bench)"
    if not binary.is_file() or not (tool / "cfg" / benchmark).is_dir():
        raise ToolMissing(str(tool), f"has no kube-bench binary with cfg/{benchmark}", fix)
    proc = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=60, check=False)
    said = proc.stdout.strip() or proc.stderr.strip()
    if said != VERSION:
        raise ToolMissing(str(binary), f"reports version {said!r}, not {VERSION}", fix)


def bundle(tool: Path, overlay: Path = OVERLAY, benchmark: str = BENCHMARK) -> bytes:
    """kube-bench, its benchmark's checks (cfg/BENCHMARK) and our overlay (config.yaml) as one gzip'd tar.

    Owners, modes and times are fixed, so the same files always give the same bytes.
    """
    members = [("kube-bench", tool / "kube-bench", 0o755), ("config.yaml", overlay, 0o644)]
    checks = sorted(p for p in (tool / "cfg" / benchmark).iterdir() if p.is_file())
    members += [(f"cfg/{benchmark}/{p.name}", p, 0o644) for p in checks]
    buf = io.BytesIO()
    gz = gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0)
    with gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, path, mode in members:
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = mode
            info.uname = info.gname = "root"
            with path.open("rb") as data:
                tar.addfile(info, data)
    return buf.getvalue()


def remote_script(targets: Sequence[str], benchmark: str = BENCHMARK, kubeconfig: str | None = None) -> str:
    """What runs on a node: unpack the tar from standard input into a scratch directory, run kube-bench
    there, print its JSON report; the directory goes when the shell exits, on a failure or a signal too."""
    env = f"KUBECONFIG={shlex.quote(kubeconfig)} " if kubeconfig else ""
    # A signal ends the shell through `exit`, so the EXIT trap runs in dash as well as in bash.
    return f"""set -eu
d=$(mktemp -d /tmp/kube-bench.XXXXXX)
trap 'rm -rf "$d"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
tar -xzf - -C "$d"
cd "$d"
PATH={layout.DIRS.bin}:/usr/sbin:/usr/bin:/sbin:/bin {env}./kube-bench run \\
  --targets {",".join(targets)} --benchmark {benchmark} \\
  --config "$d/config.yaml" --config-dir "$d/cfg" --json --outputfile "$d/report.json" >&2
cat "$d/report.json"
"""


def required_units(role: str) -> list[str]:
    """The services a node of this role runs (the layout's units with a binary; pod-network is a oneshot)."""
    return [u.name for u in layout.units_for(role) if u.binary is not None]


def require_running(ssh: Ssh, node: HostConnection) -> None:
    """Benchmark only a node whose components run: a stopped one's checks fail for want of its command line."""
    units = required_units(node.role)
    proc = ssh.run(node.name, f"systemctl is-active {' '.join(units)}", check=False, timeout=60)
    states = proc.stdout.decode(errors="replace").split()
    down = [f"{u} ({s})" for u, s in zip(units, states, strict=False) if s != "active"]
    if down or len(states) != len(units):
        raise ProvisionerError(
            f"{node.name}",
            f"not every service runs: {', '.join(down) or proc.stderr.decode(errors='replace').strip()}",
            "bring the cluster up (`provisioner up`) and check `provisioner verify --only hosts` first",
        )


def run_on(ssh: Ssh, node: HostConnection, payload: bytes, benchmark: str = BENCHMARK) -> dict[str, Any]:
    """Run kube-bench on one node and return its JSON report as parsed."""
    kubeconfig = ADMIN_KUBECONFIG if node.role == "master" else None
    script = remote_script(TARGETS[node.role], benchmark, kubeconfig)
    out = ssh.run(node.name, script, input=payload, timeout=TIMEOUT).stdout.decode(errors="replace")
    try:
        report = json.loads(out)
    except ValueError as exc:
        raise ReportError(node.name, f"kube-bench printed no JSON report ({exc}): {out[:200]!r}") from None
    if not isinstance(report, dict):
        raise ReportError(node.name, "kube-bench's report is not a JSON object")
    return report


# What kube-bench prints of a file can hold a secret: check 4.3.1 prints kube-proxy's whole kubeconfig,
# whose client-key-data is its private key. Values of such keys and PEM private keys never reach a report.
# The value ends at white space, a quote or a backslash: a failed audit's output arrives Go-quoted (a literal \n).
_SECRET_VALUE = re.compile(r"([\w-]*(?:key-data|token|password|secret)\s*:\s*)[^\s\"\\]+")
_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)
REDACTED = "<redacted>"


def redact(value: Any) -> Any:
    """The report with every secret value replaced by REDACTED (a copy; the input is left as it is)."""
    if isinstance(value, str):
        return _SECRET_VALUE.sub(rf"\g<1>{REDACTED}", _PRIVATE_KEY.sub(REDACTED, value))
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Finding:
    """One FAILed check."""

    id: str
    text: str
    scored: bool  # an automated check; kube-bench reports a failing manual one as WARN


@dataclass
class TargetSummary:
    """One node's results for one kube-bench target (master, etcd, controlplane, policies, node)."""

    node: str
    target: str
    counts: dict[str, int]  # by status: PASS, FAIL, WARN, INFO
    fails: list[Finding] = field(default_factory=list)

    @property
    def automated_fails(self) -> list[Finding]:
        return [f for f in self.fails if f.scored]


STATUSES = ("PASS", "FAIL", "WARN", "INFO")


def summarise(node: str, report: Mapping[str, Any], targets: Iterable[str]) -> list[TargetSummary]:
    """Counts and FAILs per target, from the checks themselves; each count must equal kube-bench's own
    total, and every target asked for must be in the report."""
    summaries = []
    try:
        for controls in report["Controls"]:
            counts = Counter({s: 0 for s in STATUSES})
            fails = []
            for group in controls["tests"]:
                for check in group["results"]:
                    counts[check["status"]] += 1
                    if check["status"] == "FAIL":
                        fails.append(Finding(check["test_number"], check["test_desc"], bool(check["scored"])))
            own = {s: controls[f"total_{s.lower()}"] for s in STATUSES}
            if dict(counts) != own:
                raise ReportError(
                    f"{node}: target {controls['node_type']}",
                    f"its checks count {dict(counts)} but kube-bench's totals say {own}",
                )
            summaries.append(TargetSummary(node, str(controls["node_type"]), dict(counts), fails))
    except (KeyError, TypeError) as exc:
        raise ReportError(node, f"kube-bench's report lacks {exc} where {VERSION}'s JSON has it") from None
    missing = [t for t in targets if t not in {s.target for s in summaries}]
    if missing:
        raise ReportError(node, f"kube-bench's report has no results for target(s) {', '.join(missing)}")
    return summaries


def render(summaries: Sequence[TargetSummary]) -> str:
    """The table (one row per node and target) and then every FAIL."""
    lines = [f"{'node':<12} {'target':<13}" + "".join(f"{s:>6}" for s in STATUSES)]
    for s in summaries:
        lines.append(f"{s.node:<12} {s.target:<13}" + "".join(f"{s.counts[k]:>6}" for k in STATUSES))
    fails = [(s, f) for s in summaries for f in s.fails]
    if fails:
        lines.append("")
        for s, f in fails:
            kind = "automated" if f.scored else "manual"
            lines.append(f"FAIL {s.node} {f.id:<7} [{kind}] {f.text}")
    return "\n".join(lines)


def exit_status(summaries: Sequence[TargetSummary]) -> int:
    return 1 if any(s.automated_fails for s in summaries) else 0


def chosen_nodes(known: Sequence[HostConnection], worker: str | None) -> list[HostConnection]:
    """The master, and the named worker or else the first one."""
    masters = [h for h in known if h.role == "master"]
    workers = [h for h in known if h.role == "worker" and (worker is None or h.name == worker)]
    if not masters or not workers:
        wanted = "a master and " + (f"the worker {worker}" if worker else "a worker")
        raise ProvisionerError(
            "host list", f"has not {wanted}: {', '.join(h.name for h in known) or 'no hosts'}", "check --worker"
        )
    return [masters[0], workers[0]]


def benchmark(spec_file: Path, worker: str | None, tool: Path) -> tuple[list[TargetSummary], Path]:
    """Run kube-bench on the master and one worker; return the summaries and the report directory."""
    cluster = spec.load(spec_file)
    state = State.for_cluster(cluster.name)
    check_tool(tool)
    nodes = chosen_nodes(hosts.load(state), worker)
    prefix = providers.for_cluster(cluster, state, EventBus()).command_prefix()
    # Static hosts keep their host keys (trust on first use); lab VMs are made anew with fresh ones.
    options = hosts.ssh_options(
        state.known_hosts, strict=isinstance(cluster.spec.provider, StaticProvider), control_dir=state.ssh_control_dir
    )
    ssh = Ssh({n.name: n for n in nodes}, prefix, options)
    for node in nodes:
        require_running(ssh, node)
    payload = bundle(tool)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = state.root / "reports" / f"kube-bench-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: list[TargetSummary] = []
    for node in nodes:
        print(f"{node.name}: kube-bench {VERSION} {BENCHMARK} --targets {','.join(TARGETS[node.role])}", flush=True)
        report = redact(run_on(ssh, node, payload))
        (out_dir / f"{node.name}.json").write_text(json.dumps(report, indent=2) + "\n")
        summaries += summarise(node.name, report, TARGETS[node.role])
    (out_dir / "summary.json").write_text(
        json.dumps({"kube_bench": VERSION, "benchmark": BENCHMARK, "targets": [asdict(s) for s in summaries]}, indent=2)
        + "\n"
    )
    return summaries, out_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=paths.default_spec(), help="cluster spec (default: the lab)")
    parser.add_argument("--worker", help="the worker to benchmark (default: the first in the host list)")
    parser.add_argument("--kube-bench", type=Path, default=tool_dir(), help="kube-bench binary and cfg/ directory")
    args = parser.parse_args()
    try:
        summaries, out_dir = benchmark(args.spec, args.worker, args.kube_bench)
    except ProvisionerError as exc:
        print(f"error: {exc.message()}", file=sys.stderr)
        return 2
    print(render(summaries))
    print(f"\nreports: {out_dir}")
    return exit_status(summaries)


if __name__ == "__main__":
    sys.exit(main())
