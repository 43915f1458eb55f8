"""Hostile specs: each is refused with one line that names the field, the value and the fix, within 2 s,
by spec.load (a SpecError) and by `provisioner validate` (that line and exit 2, no traceback).

Files that could hang or exhaust memory if a bound regressed (alias bombs, /dev/zero, a pipe) are read
in child processes with a timeout, so a regression fails its test instead of stalling the suite.
"""

from __future__ import annotations

import copy
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from provisioner import paths, spec
from provisioner.cli import app
from provisioner.errors import SpecError
from provisioner.providers.vagrant import generate_ssh_key

BUDGET = 2.0  # seconds from reading the file to the error line
HANG_GUARD = 20.0  # a child still running after this has hung (its start alone may take seconds when loaded)
DEFAULT_TEXT = paths.default_spec().read_text()
DEFAULT = yaml.safe_load(DEFAULT_TEXT)

Writer = Callable[[Path], Path]  # makes the hostile spec inside the folder it is given, returns its path


@dataclass(frozen=True)
class Case:
    id: str
    write: Writer
    field: str  # the field path (or the file's position) the error line names
    fix: str  # a fragment of what the line tells the user to do
    hangs: bool = False  # read only in a child with a timeout: a regression could hang or eat memory


def text(content: str | bytes) -> Writer:
    def write(folder: Path) -> Path:
        path = folder / "cluster.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return write


def spec_with(change: Callable[[dict[str, Any]], None]) -> Writer:
    """The default spec with one change, written as YAML."""

    def write(folder: Path) -> Path:
        data = copy.deepcopy(DEFAULT)
        change(data)
        path = folder / "cluster.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def setting(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set spec.nodes.0.cpus-style paths (digits index lists)."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


def renamed(dotted: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[new] = node.pop(last)

    return change


def existing(path: str) -> Writer:
    return lambda _folder: Path(path)


def billion_laughs() -> str:
    lines = ["laughs:", '  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"  {level}: &{level} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n" + DEFAULT_TEXT  # 9**9 strings, each level nine aliases of the one before


def named_pipe(folder: Path) -> Path:
    path = folder / "cluster.yaml"
    os.mkfifo(path)
    return path


READER: list[Case] = [
    Case("alias-bomb", text(billion_laughs()), "laughs.e[0] (line 6)", "write the values out", hangs=True),
    Case("deep-nesting", text("spec: " + "[" * 1000 + "]" * 1000 + "\n"), "spec[0][0]", "remove the extra nesting"),
    Case(
        "deep-mapping",
        text("spec: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n"),
        "spec.a.a.a",
        "remove the extra nesting",
    ),
    Case("alias-loop", text("spec: &s [*s]\n"), "spec[0] (line 1)", "write the value out"),
    Case("too-large", text("# padding\n" * 30_000), "is 300000 bytes", "pass the cluster spec file"),
    Case("dev-zero", existing("/dev/zero"), "/dev/zero: is a character device", "pass the cluster spec", hangs=True),
    Case("named-pipe", named_pipe, "is a named pipe", "pass the cluster spec file", hangs=True),
    Case("directory", lambda folder: folder, "is a directory", "pass the cluster spec file"),
    Case(
        "latin-1-byte",
        text(DEFAULT_TEXT.replace("name: lab", "name: l\xe4b").encode("latin-1")),
        "byte 0xE4 at line 6, column 10",
        "save the file as UTF-8",
    ),
    Case("binary-file", text(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8), "a NUL byte", "not a YAML spec"),
    Case("utf-16", text(DEFAULT_TEXT.encode("utf-16")), "is UTF-16", "save it as UTF-8"),
    Case(
        "control-character",
        text(DEFAULT_TEXT.replace("name: lab", "name: l\x1b[2Jab")),
        "character U+001B at line 6, column 10",
        "remove it",
    ),
    Case(
        "duplicate-nodes",
        text(DEFAULT_TEXT + "  nodes:\n    - {name: solo, role: master, address: 192.168.56.20}\n"),
        "spec.nodes (line 40): duplicate key 'nodes' at line 40, first at line 24",
        "remove one of them",
    ),
    Case(
        "duplicate-address",
        text(DEFAULT_TEXT.replace("address: 192.168.56.11\n", "address: 192.168.56.11\n      address: 10.0.0.1\n")),
        "spec.nodes[1].address (line 33): duplicate key 'address' at line 33, first at line 32",
        "remove one of them",
    ),
    Case(
        "key-read-as-boolean",
        text(DEFAULT_TEXT.replace("  kubernetes:", "  on: x\n  kubernetes:")),
        "spec (line 8): the key 'on' is read as true/false",
        "use the field's name",
    ),
    Case(
        "number-too-long",
        text(DEFAULT_TEXT.replace("cpus: 2 ", "cpus: " + "9" * 5000 + " ")),
        "spec.nodes[0].cpus (line 28)",
        "write a number of the field's size",
    ),
    Case(
        "huge-hex-number",  # pydantic could not even print it: 'Exception ignored ... repr() failed'
        text(DEFAULT_TEXT.replace("type: vagrant", "type: 0x" + "f" * 5000)),
        "spec.provider.type (line 11)",
        "write a number of the field's size",
    ),
    Case(
        "impossible-date",
        text(DEFAULT_TEXT.replace("version: v1.37.2", "version: 2024-13-01")),
        "spec.kubernetes.version (line 9): '2024-13-01' cannot be read as a date (month must be in 1..12)",
        "in quotes if it is text",
    ),
    Case(
        "tag-that-cannot-apply",  # PyYAML's own constructor raised KeyError
        text(DEFAULT_TEXT.replace("nodeSubnet: 192.168.56.0/24", "nodeSubnet: !!bool 192.168.56.0/24")),
        "spec.network.nodeSubnet (line 17): '192.168.56.0/24' cannot be read as true/false",
        "write a plain value",
    ),
    Case(
        "python-tag",
        text(DEFAULT_TEXT.replace("name: lab", "name: !!python/object/apply:os.system [id]")),
        "not valid YAML at line 6, column 9",
        "remove the tag",
    ),
]

TYPES: list[Case] = [
    Case(
        "snake-case-alias",
        spec_with(renamed("spec.network.nodeSubnet", "node_subnet")),
        "spec.network.node_subnet: unknown key 'node_subnet'",
        "write it as 'nodeSubnet' (spec keys are camelCase only)",
    ),
    Case(
        "snake-case-optional",
        spec_with(renamed("spec.network.podSubnetPerNodePrefix", "pod_subnet_per_node_prefix")),
        "spec.network.pod_subnet_per_node_prefix: unknown key",
        "write it as 'podSubnetPerNodePrefix'",
    ),
    Case(
        "boolean-as-number",
        spec_with(setting("spec.nodes.0.cpus", True)),
        "spec.nodes[0].cpus: True is true/false, not a whole number",
        "write a number without quotes such as 2",
    ),
    Case(
        "text-as-number",
        spec_with(setting("spec.nodes.1.memory", "2048")),
        "spec.nodes[1].memory: '2048' is text, not a whole number",
        "write a number without quotes such as 2048",
    ),
    Case(
        "integer-as-address",
        spec_with(setting("spec.nodes.0.address", 3232250890)),
        "spec.nodes[0].address: 3232250890 is a number, not an IPv4 address",
        "write it in dotted form",
    ),
    Case(
        "integer-as-subnet",
        spec_with(setting("spec.network.serviceSubnet", 174063616)),
        "spec.network.serviceSubnet: 174063616 is a number, not an IPv4 network",
        "write it in CIDR form",
    ),
    Case(
        "number-as-version",
        text(DEFAULT_TEXT.replace("version: v1.37.2", "version: 1.37")),
        "spec.kubernetes.version: 1.37 is a decimal number, not text",
        "write text such as v1.37.2",
    ),
]


def node_subnet(subnet: str) -> Callable[[dict[str, Any]], None]:
    """Move the node subnet and every node into it (the nodes keep their host numbers)."""
    network = subnet.rsplit(".", 1)[0]

    def change(data: dict[str, Any]) -> None:
        data["spec"]["network"]["nodeSubnet"] = subnet
        for node in data["spec"]["nodes"]:
            node["address"] = f"{network}.{node['address'].rsplit('.', 1)[1]}"

    return change


def masters(count: int) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        nodes = data["spec"]["nodes"]
        for i in range(1, count):
            nodes.insert(i, {**nodes[0], "name": f"master-{i + 1}", "address": f"192.168.56.{20 + i}"})

    return change


NETWORK: list[Case] = [
    Case(
        "node-at-host-bridge",
        spec_with(setting("spec.nodes.0.address", "192.168.56.1")),
        "spec.nodes[0].address: '192.168.56.1' is the host's own address",
        "use a later one, such as 192.168.56.10",
    ),
    Case(
        "node-subnet-loopback",
        spec_with(node_subnet("127.0.56.0/24")),
        "spec.network.nodeSubnet: 127.0.56.0/24 overlaps the loopback range",
        "use a private range such as 192.168.56.0/24",
    ),
    Case(
        "pod-subnet-multicast",
        spec_with(setting("spec.network.podSubnet", "224.10.0.0/16")),
        "spec.network.podSubnet: 224.10.0.0/16 overlaps the multicast range",
        "use a private range such as 10.244.0.0/16",
    ),
    Case(
        "service-subnet-link-local",
        spec_with(setting("spec.network.serviceSubnet", "169.254.0.0/16")),
        "spec.network.serviceSubnet: 169.254.0.0/16 overlaps the link-local range",
        "use a private range such as 10.96.0.0/12",
    ),
    Case(
        "node-subnet-vagrant-management",
        spec_with(node_subnet("192.168.121.0/24")),
        "spec.network.nodeSubnet: 192.168.121.0/24 overlaps Vagrant's management network 192.168.121.0/24",
        "pick another, such as 192.168.56.0/24",
    ),
    Case(
        "pod-subnet-vagrant-management",
        spec_with(setting("spec.network.podSubnet", "192.168.64.0/18")),
        "spec.network.podSubnet: 192.168.64.0/18 overlaps Vagrant's management network",
        "pick another, such as 10.244.0.0/16",
    ),
    Case(
        "service-subnet-too-small",
        spec_with(setting("spec.network.serviceSubnet", "10.96.0.0/29")),
        "spec.network.serviceSubnet: 10.96.0.0/29 holds 8 address(es), too few",
        "use a /28 or larger",
    ),
    Case(
        "two-masters",
        spec_with(masters(2)),
        "spec.nodes: 2 nodes have role 'master' (master, master-2); etcd (one member per master) needs a majority "
        "of its members up, so 2 masters survive no more failures than 1: an even count adds a machine and no "
        "fault tolerance",
        "use 1, 3 or 5 masters and give the other nodes role 'worker'",
    ),
    Case(
        "four-masters",
        spec_with(masters(4)),
        "spec.nodes: 4 nodes have role 'master' (master, master-2, master-3, master-4); etcd (one member per "
        "master) needs a majority of its members up, so 4 masters survive no more failures than 3",
        "use 1, 3 or 5 masters and give the other nodes role 'worker'",
    ),
    Case(
        "seven-masters",
        spec_with(masters(7)),
        "spec.nodes: 7 nodes have role 'master' (master, master-2, master-3, master-4, master-5, master-6, "
        "master-7); 7 etcd members (one per master) are more than supported: every write waits for a majority",
        "use 1, 3 or 5 masters and give the other nodes role 'worker'",
    ),
    Case(
        "mirror-without-host",
        spec_with(setting("spec.artifacts", {"source": "mirror", "mirror": "http:///mirror/"})),
        "spec.artifacts.mirror: 'http:///mirror/' has no host",
        "give the mirror's base URL with its host",
    ),
    Case(
        "mirror-bad-port",
        spec_with(setting("spec.artifacts", {"source": "mirror", "mirror": "http://10.0.0.1:99999/"})),
        "spec.artifacts.mirror: 'http://10.0.0.1:99999/' is not a valid URL (Port out of range",
        "give the mirror's base URL",
    ),
]


def static_hosts(bad_key: Callable[[Path], Path] | None = None, user: str = "root") -> Writer:
    """A static-hosts spec with good keys, except worker-1's key (made by `bad_key`) and user."""

    def write(folder: Path) -> Path:
        good = folder / "id_ed25519"
        generate_ssh_key(good)
        data = copy.deepcopy(DEFAULT)
        data["spec"]["provider"] = {"type": "static"}
        for node in data["spec"]["nodes"]:
            node.pop("cpus")
            node.pop("memory")
            node["ssh"] = {"user": "root", "key": str(good)}
        data["spec"]["nodes"][1]["ssh"] = {"user": user, "key": str(bad_key(folder) if bad_key else good)}
        path = folder / "cluster.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def key_file(content: bytes | None = None, mode: int = 0o600) -> Callable[[Path], Path]:
    """A key file for worker-1: a fresh private key unless `content` is given, with `mode`."""

    def make(folder: Path) -> Path:
        key = folder / "worker-1" / "id_ed25519"
        key.parent.mkdir()
        generate_ssh_key(key)
        if content is not None:
            key.write_bytes(content)
        key.chmod(mode)
        return key

    return make


def public_key(folder: Path) -> Path:
    key = key_file()(folder)
    return key.with_name(key.name + ".pub")


STATIC: list[Case] = [
    Case(
        "key-group-readable",
        static_hosts(key_file(mode=0o640)),
        "spec.nodes[1].ssh.key: ",
        "has mode 0640, open to group or others, and ssh refuses such a key; run chmod 600",
    ),
    Case(
        "key-world-readable",
        static_hosts(key_file(mode=0o644)),
        "spec.nodes[1].ssh.key: ",
        "has mode 0644, open to group or others, and ssh refuses such a key; run chmod 600",
    ),
    Case("key-empty", static_hosts(key_file(b"")), "spec.nodes[1].ssh.key: ", "is empty; give the private key file"),
    Case(
        "key-is-public",
        static_hosts(public_key),
        "spec.nodes[1].ssh.key: ",
        "is a public key; give the private key, usually the same path without .pub",
    ),
    Case(
        "key-is-not-a-key",
        static_hosts(key_file(b"just some text\n")),
        "spec.nodes[1].ssh.key: ",
        "holds no SSH private key",
    ),
    Case(
        "user-is-an-option",
        static_hosts(user="-oProxyCommand=touch /tmp/pwned"),
        "spec.nodes[1].ssh.user: '-oProxyCommand=touch /tmp/pwned' is not a user name ssh can be given safely",
        "not starting with '-'",
    ),
]

OUTPUT: list[Case] = [
    # the CLI prints with rich: a value that looks like markup must print as text, not crash or vanish
    Case(
        "markup-closing-tag",
        spec_with(setting("metadata.name", "[/]")),
        "metadata.name: '[/]' is not a valid name",
        "use lowercase letters",
    ),
    Case(
        "markup-style",
        spec_with(setting("spec.provider.backend", "[red]libvirt[/red]")),
        "spec.provider.backend: '[red]libvirt[/red]' is not allowed",
        "expected one of 'libvirt' or 'virtualbox'",
    ),
    Case(
        "escape-codes-in-a-key",
        spec_with(setting("spec.\x1b[2Jnodes", 1)),
        "spec['\\x1b[2Jnodes']: unknown key '\\x1b[2Jnodes'",
        "allowed keys here",
    ),
]

CASES = READER + TYPES + NETWORK + STATIC + OUTPUT


def _check_line(line: str, case: Case) -> None:
    assert case.field in line, f"the line does not name {case.field!r}: {line}"
    assert case.fix in line, f"the line does not say {case.fix!r}: {line}"
    assert len(line) < 400 and "\n" not in line, line


@pytest.mark.parametrize("case", [c for c in CASES if not c.hangs], ids=lambda c: c.id)
def test_load_refuses_with_field_and_fix(case: Case, tmp_path: Path) -> None:
    path = case.write(tmp_path)
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        spec.load(path)
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET, f"took {elapsed:.1f}s"
    assert len(info.value.problems) == 1, info.value.problems
    _check_line(info.value.problems[0], case)


@pytest.mark.parametrize("case", [c for c in CASES if not c.hangs], ids=lambda c: c.id)
def test_cli_validate_prints_the_line_and_exits_2(case: Case, tmp_path: Path) -> None:
    path = case.write(tmp_path)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["validate", "--spec", str(path)])
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET, f"took {elapsed:.1f}s"
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    _check_line(lines[0], case)


# Run in a child: spec.load timed from inside (the interpreter's start is not the reader's time; on a
# loaded machine importing the CLI alone can take a second), its problems printed one per line after it.
TIMED_LOAD = """
import sys, time
from pathlib import Path
from provisioner import spec
from provisioner.errors import SpecError
started = time.monotonic()
try:
    spec.load(Path(sys.argv[1]))
except SpecError as exc:
    print(time.monotonic() - started)
    print(*exc.problems, sep="\\n")
    sys.exit(0)
sys.exit("accepted")
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=HANG_GUARD, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv[-3:])} still ran after {HANG_GUARD:.0f}s")


def load_in_child(path: Path, prefix: list[str] | None = None) -> tuple[float, list[str]]:
    """spec.load in a child process: (its seconds, the SpecError's problems)."""
    result = _run([*(prefix or []), sys.executable, "-c", TIMED_LOAD, str(path)])
    assert result.returncode == 0, result.stderr
    seconds, *problems = result.stdout.splitlines()
    return float(seconds), problems


@pytest.mark.parametrize("case", [c for c in CASES if c.hangs], ids=lambda c: c.id)
def test_load_never_hangs(case: Case, tmp_path: Path) -> None:
    seconds, problems = load_in_child(case.write(tmp_path))
    assert seconds < BUDGET, f"took {seconds:.1f}s"
    assert len(problems) == 1, problems
    _check_line(problems[0], case)


@pytest.mark.parametrize("case", [c for c in CASES if c.hangs], ids=lambda c: c.id)
def test_cli_validate_never_hangs(case: Case, tmp_path: Path) -> None:
    result = _run([sys.executable, "-m", "provisioner", "validate", "--spec", str(case.write(tmp_path))])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    _check_line(lines[0], case)


def test_the_default_spec_still_validates() -> None:
    started = time.monotonic()
    result = CliRunner().invoke(app, ["validate"])
    assert time.monotonic() - started < BUDGET
    assert result.exit_code == 0, result.output
    assert "cluster 'lab', 1 master(s), 2 worker(s)" in result.stdout
    spec.load(paths.default_spec())


def manifests(folder: Path) -> Path:
    (folder / "manifests").mkdir()
    (folder / "manifests" / "cm.yaml").write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    return folder / "manifests"


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.id in ("latin-1-byte", "binary-file", "duplicate-nodes")], ids=lambda c: c.id
)
def test_drift_exits_2_not_1_on_a_bad_spec(case: Case, tmp_path: Path) -> None:
    """drift's 1 means "drift found": a spec it cannot read must be 2, with the validator's line."""
    result = CliRunner().invoke(
        app, ["drift", "--manifests", str(manifests(tmp_path)), "--spec", str(case.write(tmp_path))]
    )
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    _check_line(lines[0], case)


def test_drift_exits_2_on_a_bug_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(_path: Path) -> None:
        raise RuntimeError("a bug in the spec reader")

    monkeypatch.setattr(spec, "load", bug)
    result = CliRunner().invoke(app, ["drift", "--manifests", str(manifests(tmp_path))])
    assert result.exit_code == 2
    assert "RuntimeError: a bug in the spec reader" in result.stderr  # a bug still shows its traceback


@pytest.mark.parametrize("count", [3, 5])
def test_an_odd_number_of_masters_up_to_five_validates(count: int) -> None:
    """Three or five masters: a stacked control plane whose etcd survives one or two failed masters."""
    data = copy.deepcopy(DEFAULT)
    masters(count)(data)
    cluster = spec.parse(data)
    assert len(cluster.masters) == count and len(cluster.workers) == 2


def test_the_ha_lab_spec_validates() -> None:
    result = CliRunner().invoke(
        app, ["validate", "--spec", str(paths.REPO_ROOT / "inventories" / "ha" / "cluster.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "cluster 'ha', 3 master(s), 2 worker(s)" in result.stdout


def test_the_master_count_is_one_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The validator allows what SUPPORTED_MASTER_COUNTS lists and names that list when it refuses."""
    monkeypatch.setattr(spec, "SUPPORTED_MASTER_COUNTS", (1, 3))
    three = copy.deepcopy(DEFAULT)
    masters(3)(three)
    assert len(spec.parse(three).masters) == 3
    five = copy.deepcopy(DEFAULT)
    masters(5)(five)
    with pytest.raises(SpecError) as info:
        spec.parse(five, where="c.yaml")
    assert info.value.problems == [
        "c.yaml: spec.nodes: 5 nodes have role 'master' (master, master-2, master-3, master-4, master-5); 5 etcd "
        "members (one per master) are more than supported: every write waits for a majority; use 1 or 3 masters "
        "and give the other nodes role 'worker'"
    ]


def test_key_unreadable_to_the_current_user(tmp_path: Path) -> None:
    """Root reads any file, so as root the check runs without the capabilities that let it (setpriv)."""
    path = static_hosts(key_file(mode=0o000))(tmp_path)
    bad = tmp_path / "worker-1" / "id_ed25519"
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: every file is readable")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    seconds, problems = load_in_child(path, prefix)
    assert seconds < BUDGET, f"took {seconds:.1f}s"
    user = pwd.getpwuid(os.getuid()).pw_name
    assert problems == [
        f"{path}: spec.nodes[1].ssh.key: {str(bad)!r} cannot be read by user {user} (permission denied); "
        "make it readable to that user"
    ]


@pytest.mark.parametrize("verb", ["up", "destroy", "verify", "reset"])
def test_every_verb_prints_a_bad_value_as_text_not_markup(tmp_path: Path, verb: str) -> None:
    """A value such as `[/]` in the error once crashed rich's markup parser in the verbs other than validate."""
    from typer.testing import CliRunner

    from provisioner import cli

    bad = tmp_path / "cluster.yaml"
    bad.write_text(paths.default_spec().read_text().replace("name: lab", "name: '[/]'", 1))
    result = CliRunner().invoke(cli.app, [verb, "--spec", str(bad), *(["--yes"] if verb == "reset" else [])])
    assert result.exit_code == 2, result.output
    assert "metadata.name" in result.output and "[/]" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
