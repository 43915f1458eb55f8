"""The cluster spec: one versioned YAML document, validated here, the single source of truth.

Everything else (inventory, group vars, the Vagrant machine list) is derived from :class:`Cluster`.
Validation reports one line per problem, each naming the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import ipaddress
import os
import pwd
import re
import reprlib
import shlex
import stat
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from provisioner.errors import SpecError
from provisioner.versions import DEFAULT_KUBERNETES, SUPPORTED

API_VERSION = "provisioner.dev/v1alpha1"
KIND = "Cluster"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
VERSION_PATTERN = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")
# How many masters a cluster may have: each runs one member of the cluster's etcd, which needs a majority
# of its members to agree, so an odd count (1 tolerates no failure, 3 one, 5 two). More members only slow
# every write down.
SUPPORTED_MASTER_COUNTS: tuple[int, ...] = (1, 3, 5)
# vagrant-libvirt's management network: every VM's first interface (DHCP, Vagrant's SSH) lives in it, so
# no cluster network may overlap it. providers/vagrant.py hands the same network to the Vagrantfile.
VAGRANT_MANAGEMENT_SUBNET = ipaddress.IPv4Network("192.168.121.0/24")
# Ranges no node, pod or service subnet may touch: addresses there never leave a host or are not unicast.
UNUSABLE_RANGES = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "the 'this network' range"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "the loopback range"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "the link-local range"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "the multicast range"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "the reserved range"),
)
# What ssh reads as a private key (OpenSSH, PEM and PKCS#8 forms) and what is a public key given instead.
PRIVATE_KEY = re.compile(rb"-----BEGIN (OPENSSH |RSA |DSA |EC |ENCRYPTED )?PRIVATE KEY-----")
PUBLIC_KEY = re.compile(
    rb"\s*((ssh|ecdsa|sk)-[\w@.-]+ AAAA|---- BEGIN SSH2 PUBLIC KEY ----|-----BEGIN (RSA )?PUBLIC KEY-----)"
)
MAX_KEY_BYTES = 64 * 1024  # a 16384-bit RSA key is 13 KiB
# A login name ssh and the remote host accept; a leading '-' would reach ssh as an option (-oProxyCommand=...)
SSH_USER_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$"
# A certificate lifetime: a whole number of minutes, hours or days ("365d", "2h", "30m").
DURATION_PATTERN = r"^[1-9][0-9]{0,5}[mhd]$"
PATTERN_HELP = {  # what each pattern's error line says after the value
    NAME_PATTERN: "is not a valid name; use lowercase letters, digits and '-', "
    "starting and ending with a letter or digit (at most 63 characters)",
    SSH_USER_PATTERN: "is not a user name ssh can be given safely; use letters, digits, '.', '_' and '-', "
    "not starting with '-' or '.' (at most 32 characters)",
    DURATION_PATTERN: "is not a duration; write a whole number and a unit: 30m, 2h or 365d",
}
SUBNET_EXAMPLES = {"nodeSubnet": "192.168.56.0/24", "podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12"}
# The apiserver's service takes the subnet's 1st address and cluster DNS its 10th (NetworkSpec), so the
# service subnet needs more than 11 addresses: a /28 at least.
SERVICE_SUBNET_MAX_PREFIX = 28


class Model(BaseModel):
    """Base for every spec section: unknown keys are errors, YAML keys are camelCase and nothing else
    (no snake_case twin), and values are not converted (`cpus: true` is not 1, `"2"` is not 2)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True, strict=True)


def _written_as_text(what: str, fix: str) -> BeforeValidator:
    """Addresses and paths are parsed from text only: pydantic would take the number 3232235786 as 192.168.56.10."""

    def check(value: object) -> object:
        if isinstance(value, str):
            return value
        raise PydanticCustomError(
            "text_expected", "{kind}, not {what}", {"kind": _kind(value), "what": what, "fix": fix}
        )

    return BeforeValidator(check)


# Strict(False): strict mode takes only instances of these classes; the text is parsed after the check above
Address = Annotated[
    ipaddress.IPv4Address,
    Strict(False),
    _written_as_text("an IPv4 address", "write it in dotted form such as 192.168.56.11"),
]
Subnet = Annotated[
    ipaddress.IPv4Network,
    Strict(False),
    _written_as_text("an IPv4 network", "write it in CIDR form such as 10.244.0.0/16"),
]
FilePath = Annotated[Path, Strict(False), _written_as_text("a path", "write the path as text")]


class Metadata(Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="cluster name, a DNS label")]


class KubernetesSpec(Model):
    version: str = DEFAULT_KUBERNETES


class NetworkSpec(Model):
    node_subnet: Subnet = Field(description="network the nodes' addresses live in")
    pod_subnet: Subnet = ipaddress.IPv4Network("10.244.0.0/16")
    pod_subnet_per_node_prefix: Annotated[int, Field(ge=16, le=28)] = 24
    service_subnet: Subnet = ipaddress.IPv4Network("10.96.0.0/12")
    proxy_mode: Literal["iptables", "nftables"] = "iptables"

    @property
    def apiserver_service_ip(self) -> ipaddress.IPv4Address:
        return self.service_subnet.network_address + 1

    @property
    def dns_service_ip(self) -> ipaddress.IPv4Address:
        return self.service_subnet.network_address + 10


DURATION_UNITS = {"m": datetime.timedelta(minutes=1), "h": datetime.timedelta(hours=1), "d": datetime.timedelta(days=1)}
# The CAs' lifetime: every leaf expires before its CA does.
CA_VALIDITY = datetime.timedelta(days=3650)


def duration(text: str) -> datetime.timedelta:
    return int(text[:-1]) * DURATION_UNITS[text[-1]]


class PkiSpec(Model):
    leaf_validity: Annotated[str, Field(pattern=DURATION_PATTERN, description="lifetime of every leaf certificate")] = (
        "365d"
    )
    renew_before: Annotated[
        str, Field(pattern=DURATION_PATTERN, description="a leaf with less than this left is re-issued by `up`")
    ] = "30d"

    @property
    def leaf(self) -> datetime.timedelta:
        return duration(self.leaf_validity)

    @property
    def margin(self) -> datetime.timedelta:
        return duration(self.renew_before)


class ArtifactsSpec(Model):
    source: Literal["auto", "release", "mirror", "build"] = "auto"
    mirror: str | None = Field(default=None, description="base URL laid out like the official release URLs")
    cache_dir: FilePath | None = None


class SSHSpec(Model):
    user: Annotated[str, Field(pattern=SSH_USER_PATTERN)] = "root"
    key: FilePath | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 22


class Node(Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    role: Literal["master", "worker"]
    address: Address | None = None
    cpus: Annotated[int, Field(ge=1, le=64)] = 2
    memory: Annotated[int, Field(ge=512, le=262144, description="MiB")] = 2048
    ssh: SSHSpec | None = None


class VagrantProvider(Model):
    type: Literal["vagrant"]
    box: str = "provisioner/debian12"
    backend: Literal["libvirt", "virtualbox"] = "libvirt"
    accelerator: Literal["auto", "kvm", "qemu"] = "auto"
    isolation: Literal["auto", "namespace", "none"] = "auto"


class StaticProvider(Model):
    type: Literal["static"]


Provider = Annotated[Union[VagrantProvider, StaticProvider], Field(discriminator="type")]  # noqa: UP007


class ClusterBody(Model):
    kubernetes: KubernetesSpec = KubernetesSpec()
    provider: Provider
    network: NetworkSpec
    artifacts: ArtifactsSpec = ArtifactsSpec()
    pki: PkiSpec = PkiSpec()
    nodes: Annotated[list[Node], Field(min_length=1)]


class Cluster(Model):
    api_version: Literal["provisioner.dev/v1alpha1"]
    kind: Literal["Cluster"]
    metadata: Metadata
    spec: ClusterBody

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def masters(self) -> list[Node]:
        return [n for n in self.spec.nodes if n.role == "master"]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.spec.nodes if n.role == "worker"]

    @cached_property
    def pod_cidrs(self) -> dict[str, ipaddress.IPv4Network]:
        """Each node's pod subnet, keyed by node name.

        The index is the node address's offset in the node subnet, so a node keeps its pod subnet when
        other nodes are added or removed (routes on the remaining nodes stay valid).
        """
        net = self.spec.network
        prefix = net.pod_subnet_per_node_prefix
        start, size = int(net.pod_subnet.network_address), 2 ** (32 - prefix)
        # counted, not listed: a valid 10.0.0.0/8 cut into /28s is a million subnets (3 s to list)
        return {
            n.name: ipaddress.IPv4Network((start + _offset(n, net.node_subnet) * size, prefix))
            for n in self.spec.nodes
            if n.address
        }

    def node(self, name: str) -> Node:
        for n in self.spec.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def _offset(node: Node, subnet: ipaddress.IPv4Network) -> int:
    assert node.address is not None
    return int(node.address) - int(subnet.network_address)


# --- reading the file ------------------------------------------------------------------------------


MAX_SPEC_BYTES = 256 * 1024  # a spec is a few KiB (100 nodes are about 15 KiB); a larger file is not one
MAX_DEPTH = 32  # nesting levels, aliases expanded; the deepest field, spec.nodes[0].ssh.key, is at level 6
MAX_VALUES = 10_000  # values after alias expansion; a 100-node spec holds about 1,000
MAX_INTEGER = 2**63  # no field takes more (memory in MiB stops at 262144)

_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
}


def load(path: Path) -> Cluster:
    """Read, parse and validate a spec file. Raises SpecError listing every problem found."""
    where = str(path)
    text = _decode(_read_bytes(path, where), where)
    try:
        data = _load_yaml(text)
    except _Refused as exc:
        raise SpecError(where, [f"{where}: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError(where, [f"{where}: {_yaml_problem(exc, text)}"]) from None
    return parse(data, where=where, base_dir=path.parent)


def _read_bytes(path: Path, where: str) -> bytes:
    """The file's bytes, read only when it is a regular file of a spec's size (never /dev/zero or a pipe)."""

    def refuse(cause: str, fix: str = "pass the cluster spec file with --spec") -> SpecError:
        return SpecError(where, [f"{where}: {cause}; {fix}"])

    try:
        info = path.stat()
    except FileNotFoundError:
        raise refuse("file not found", "pass an existing spec with --spec") from None
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}", "check the path and its permissions") from None
    kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode))
    if kind is not None:
        raise refuse(f"is {kind}, not a spec file")
    if info.st_size > MAX_SPEC_BYTES:
        raise refuse(f"is {info.st_size} bytes, more than a spec's limit of {MAX_SPEC_BYTES}")
    try:
        # O_NONBLOCK: should the path turn into a pipe after the check, opening it must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise refuse("is not a regular file")
            data = stream.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}", "check the file's permissions") from None
    if len(data) > MAX_SPEC_BYTES:
        raise refuse(f"is more than a spec's limit of {MAX_SPEC_BYTES} bytes")
    return data


def _decode(data: bytes, where: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(where, [f"{where}: the file is UTF-16; save it as UTF-8"])
    if b"\0" in data:
        line, column = _line_column(data, data.index(b"\0"))
        raise SpecError(
            where,
            [
                f"{where}: a NUL byte at line {line}, column {column}: this is a binary file, not a YAML spec; "
                "pass the cluster spec file with --spec"
            ],
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data, exc.start)
        raise SpecError(
            where,
            [
                f"{where}: byte 0x{data[exc.start]:02X} at line {line}, column {column} is not UTF-8; "
                "save the file as UTF-8"
            ],
        ) from None


def _line_column(data: bytes | str, offset: int) -> tuple[int, int]:
    head = data[:offset]
    text = head.decode("latin-1") if isinstance(head, bytes) else head  # latin-1: one character per byte
    return text.count("\n") + 1, offset - (text.rfind("\n") + 1) + 1


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line for a YAML syntax error (PyYAML's own text spans several)."""
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _line_column(text, exc.position)
        return (
            f"character U+{exc.character:04X} at line {line}, column {column} is not allowed in YAML; "
            "remove it (a spec is plain text)"
        )
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = str(getattr(exc, "problem", None) or exc)
    context = getattr(exc, "context", None)
    if context and not context.startswith("while"):  # "expected a single document", not "while scanning"
        problem = f"{context}, {problem}"
    problem = " ".join(problem.split())[:200]
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"not valid YAML{at}: {problem}; remove the tag, a spec holds plain values"
    return f"not valid YAML{at}: {problem}; fix the syntax"


class _Refused(Exception):
    """A YAML document the reader will not build; the text is the one line that says where and why."""


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_KINDS = {
    "tag:yaml.org,2002:bool": "true/false",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds: nesting depth and values with aliases expanded (so a billion
    laughs stops at the first few thousand), no duplicate or non-text keys, no exception but YAMLError.

    PyYAML's composer recurses once per nesting level, and anything that walks the result (validation,
    the error report) pays for every alias again, so both are counted while composing.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._keys: list[str | int] = []  # the path of the node being composed
        self._depth = 0
        self._deepest = 0
        self._values = 0
        self._aliased = 0  # of those, values repeated by aliases
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node): (levels, values), aliases expanded
        self._paths: dict[int, tuple[str | int, ...]] = {}

    def _refuse(self, mark: yaml.Mark, cause: str, fix: str, keys: tuple[str | int, ...] | None = None) -> _Refused:
        where = _path(tuple(self._keys) if keys is None else keys)
        return _Refused(f"{where} (line {mark.line + 1}): {cause}; {fix}")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # a mapping's value comes with its key node as `index`, a sequence's item with its position
        pushed = isinstance(index, yaml.ScalarNode | int)
        if pushed:
            self._keys.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            if self.check_event(yaml.AliasEvent):
                return self._compose_alias(parent, index)
            return self._compose_new(parent, index)
        finally:
            if pushed:
                self._keys.pop()

    def _next_mark(self) -> yaml.Mark:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
        mark: yaml.Mark = event.start_mark
        return mark

    def _count(self, values: int, mark: yaml.Mark) -> None:
        self._values += values
        if self._values <= MAX_VALUES:
            return
        if self._aliased:
            raise self._refuse(
                mark,
                f"the document expands to more than {MAX_VALUES} values: its aliases repeat whole "
                "subtrees, as in a 'billion laughs' file",
                "write the values out instead of nesting aliases",
            )
        raise self._refuse(
            mark,
            f"the document holds more than {MAX_VALUES} values, far more than a spec (about 1,000 for 100 nodes)",
            "pass the cluster spec file, not another YAML file",
        )

    def _check_depth(self, deepest: int, mark: yaml.Mark) -> None:
        if deepest > MAX_DEPTH:
            raise self._refuse(
                mark,
                f"nested more than {MAX_DEPTH} levels deep (a spec needs 6)",
                "remove the extra nesting",
            )

    def _compose_alias(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        mark = self._next_mark()
        node = super().compose_node(parent, index)  # the anchored node; an unknown alias raises ComposerError
        size = self._sizes.get(id(node))
        if size is None:
            raise self._refuse(
                mark, "this alias points into the value that holds it, a loop", "write the value out instead"
            )
        levels, values = size
        self._check_depth(self._depth + levels, mark)
        self._deepest = max(self._deepest, self._depth + levels)
        self._aliased += values
        self._count(values, mark)
        return node

    def _compose_new(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        mark = self._next_mark()
        self._depth += 1
        self._check_depth(self._depth, mark)
        before, outer_deepest = self._values, self._deepest
        self._deepest = self._depth
        self._count(1, mark)
        node = super().compose_node(parent, index)
        assert node is not None  # compose_node returns None only past the end of the stream
        self._sizes[id(node)] = (self._deepest - self._depth + 1, self._values - before)
        self._paths[id(node)] = tuple(self._keys)
        self._deepest = max(outer_deepest, self._deepest)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            self._check_keys(node)
        return node

    def _check_keys(self, node: yaml.MappingNode) -> None:
        """Refuse what PyYAML accepts silently: a repeated key (the last one wins) and keys that are not text."""
        first: dict[str, yaml.Node] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                kind = "a list" if isinstance(key, yaml.SequenceNode) else "a mapping"
                raise self._refuse(key.start_mark, f"{kind} is used as a key", "keys are field names")
            if key.tag not in (_STR_TAG, _MERGE_TAG):
                kind = _TAG_KINDS.get(key.tag, f"a value tagged {key.tag}")
                raise self._refuse(
                    key.start_mark,
                    f"the key {_show(key.value)} is read as {kind}, not a field name",
                    "use the field's name (quote it if it is meant as text)",
                )
            if key.value in first:
                raise self._refuse(
                    key.start_mark,
                    f"duplicate key {_show(key.value)} at line {key.start_mark.line + 1}, first at line "
                    f"{first[key.value].start_mark.line + 1}; YAML would keep only the last one",
                    "remove one of them or merge them",
                    keys=(*self._keys, key.value),
                )
            first[key.value] = key

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (_Refused, yaml.YAMLError):
            raise
        except Exception as exc:  # PyYAML's constructors fail with any error: '!!bool x' is a KeyError
            detail = f" ({exc})" if isinstance(exc, ValueError) else ""  # "month must be in 1..12"
            raise self._refuse(
                node.start_mark,
                f"{_show(node.value)} cannot be read as {_TAG_KINDS.get(node.tag, node.tag)}{detail}",
                "write a plain value, in quotes if it is text",
                keys=self._paths.get(id(node), ()),
            ) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        # Past 4,300 digits int() raises, and a huge number cannot even be printed in pydantic's errors.
        try:
            value = super().construct_yaml_int(node)
        except ValueError:
            value = None
        if value is None or abs(value) > MAX_INTEGER:
            raise self._refuse(
                node.start_mark,
                f"{_show(node.value)} is a number larger than any field takes",
                "write a number of the field's size",
                keys=self._paths.get(id(node), ()),
            )
        return value


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def _load_yaml(text: str) -> Any:
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# --- validating the data ---------------------------------------------------------------------------


def parse(data: Any, where: str = "<spec>", base_dir: Path | None = None) -> Cluster:
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise SpecError(
            where, [f"{where}: the document is {kind}; expected a mapping with apiVersion, kind, metadata, spec"]
        )
    if base_dir is not None:
        data = _absolute_keys(data, base_dir)
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as exc:
        raise SpecError(where, [f"{where}: {line}" for line in _pydantic_problems(exc)]) from None
    problems = [f"{where}: {p}" for p in semantic_problems(cluster, base_dir)]
    if problems:
        raise SpecError(where, problems)
    return cluster


def _absolute_keys(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """SSH key paths in a spec are relative to the spec file's folder; the model holds them absolute."""
    nodes = data.get("spec", {}).get("nodes") if isinstance(data.get("spec"), dict) else None
    if not isinstance(nodes, list):
        return data
    data = copy.deepcopy(data)
    for node in data["spec"]["nodes"]:
        ssh = node.get("ssh") if isinstance(node, dict) else None
        if isinstance(ssh, dict) and isinstance(ssh.get("key"), str):
            ssh["key"] = _absolute_key(ssh["key"], base_dir)
    return data


def _absolute_key(key: str, base_dir: Path) -> str:
    try:
        path = Path(key).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())
    except (RuntimeError, ValueError, OSError):  # '~nosuchuser/key', a NUL byte: the key check reports it
        return key


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 10_000:  # more than 3,000 digits: Python refuses to print past 4,300
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHOW = _ShortRepr()
_SHOW.maxlevel, _SHOW.maxdict, _SHOW.maxlist, _SHOW.maxstring, _SHOW.maxlong, _SHOW.maxother = 2, 4, 4, 200, 40, 80


def _show(value: Any) -> str:
    """A value for an error line, cut short and escaped, so a line stays one short line whatever the input."""
    return _SHOW.repr(value)


def _path(loc: tuple[Any, ...]) -> str:
    if len(loc) > 12:  # a path that deep is a hostile file's; its ends say enough
        return f"{_path(loc[:6])}...{_path(loc[-3:])}"
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:  # a key with spaces, newlines or escape codes is shown quoted, never raw
            out += f"[{_show(part)}]"
    return out or "(document)"


def _model_at(loc: tuple[int | str, ...]) -> Any:
    """The model (or union) holding the mapping at `loc`, found by walking the models along the path."""
    model: Any = Cluster
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            # a discriminated union's tag (e.g. "vagrant") sits in the location; pick that member
            model = _union_member(model, str(part))
            if model is None:
                return None
            continue
        field = _field_named(model, part)
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model


def _field_named(model: Any, key: str) -> FieldInfo | None:
    fields: dict[str, FieldInfo] = getattr(model, "model_fields", {})
    return next((f for name, f in fields.items() if (f.alias or name) == key), None)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model = _model_at(loc)
    members = get_args(model) if get_origin(model) is Union else (model,)  # the provider: any member's keys
    return sorted({f.alias or name for m in members for name, f in getattr(m, "model_fields", {}).items()})


def _example(loc: tuple[int | str, ...]) -> str:
    """' such as <the field's default>', or nothing when the field has none."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    field = _field_named(_model_at(loc[:-1]), loc[-1])
    default = getattr(field, "default", None)
    return f" such as {default}" if isinstance(default, int | str) and not isinstance(default, bool) else ""


def _kind(value: object) -> str:
    """What YAML made of a value, in the words of the one who wrote it."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "empty"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, datetime.date):
        return "a date"
    return f"a {type(value).__name__}"


def _unwrap(annotation: Any) -> Any:
    """Reduce list[X], X | None and Annotated[...] to the model class they hold (or a Union)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated or origin is list:
            annotation = get_args(annotation)[0]
        elif origin is Union or str(origin) == "<class 'types.UnionType'>":
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
            else:
                return annotation
        else:
            return annotation


def _union_member(annotation: Any, tag: str) -> Any:
    for member in get_args(annotation):
        fields = getattr(member, "model_fields", {})
        tag_field = fields.get("type")
        if tag_field is not None and tag in get_args(tag_field.annotation):
            return member
    return None


def _pydantic_problems(exc: ValidationError) -> Iterator[str]:
    errors = exc.errors(include_url=False)
    # `node_subnet:` is reported once, as the unknown twin of nodeSubnet, not again as nodeSubnet missing
    twins = {
        (*err["loc"][:-1], to_camel(err["loc"][-1]))
        for err in errors
        if err["type"] == "extra_forbidden" and isinstance(err["loc"][-1], str) and "_" in err["loc"][-1]
    }
    for err in errors:
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "missing" and loc in twins:
            continue
        value = err.get("input")
        ctx = err.get("ctx", {})
        path = _clean_path(loc)
        written = f"{_show(value)} is {_kind(value)}"
        if kind == "extra_forbidden":
            yield f"{path}: {_unknown_key(loc)}"
        elif kind == "missing":
            yield f"{path}: required field is missing; add it"
        elif kind == "literal_error":
            yield f"{path}: {_show(value)} is not allowed; expected one of {ctx.get('expected', '')}"
        elif kind == "union_tag_invalid":
            expected = ctx.get("expected_tags", "")
            yield f"{path}: type {_show(ctx.get('tag'))} is not a known provider; expected {expected}"
        elif kind == "union_tag_not_found":
            yield f"{path}: required field 'type' is missing; set type to 'vagrant' or 'static'"
        elif kind == "string_pattern_mismatch":
            help_text = PATTERN_HELP.get(ctx.get("pattern", ""), f"does not match {_show(ctx.get('pattern'))}")
            yield f"{path}: {_show(value)} {help_text}"
        elif kind == "ip_v4_network":
            yield (
                f"{path}: {_show(value)} is not an IPv4 network; "
                "use CIDR form with no host bits set, such as 10.244.0.0/16"
            )
        elif kind == "ip_v4_address":
            yield f"{path}: {_show(value)} is not an IPv4 address; use dotted form such as 192.168.56.11"
        elif kind == "text_expected":
            yield f"{path}: {_show(value)} is {ctx['kind']}, not {ctx['what']}; {ctx['fix']}"
        elif kind == "int_type":
            yield f"{path}: {written}, not a whole number; write a number without quotes{_example(loc)}"
        elif kind == "string_type":
            yield f"{path}: {written}, not text; write text{_example(loc)}, in quotes if YAML reads it otherwise"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            keys = ", ".join(_allowed_keys(loc)) or "none"
            yield f"{path}: {written}, not a mapping; write its fields as key: value lines (allowed keys: {keys})"
        elif kind == "list_type":
            yield f"{path}: {written}, not a list; write one '- ' item per entry"
        elif kind == "too_short":
            yield f"{path}: {written} with {ctx.get('actual_length')} items; give at least {ctx.get('min_length')}"
        elif kind == "greater_than_equal":
            yield f"{path}: {_show(value)} is too small; use at least {ctx.get('ge')}"
        elif kind == "less_than_equal":
            yield f"{path}: {_show(value)} is too large; use at most {ctx.get('le')}"
        else:
            yield f"{path}: {_show(value)} is invalid: {err['msg'][0].lower()}{err['msg'][1:]}"


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key, allowed = loc[-1], _allowed_keys(loc[:-1])
    hint = ""
    if isinstance(key, str) and "_" in key and to_camel(key) in allowed:
        hint = f"write it as {to_camel(key)!r} (spec keys are camelCase only); "
    elif isinstance(key, str) and (close := difflib.get_close_matches(key, allowed, n=1)):
        hint = f"did you mean {close[0]!r}? "
    return f"unknown key {_show(key)}; {hint}allowed keys here: {', '.join(allowed) or 'none'}"


def _clean_path(loc: tuple[int | str, ...]) -> str:
    # drop the discriminator tag pydantic inserts after 'provider'
    cleaned: list[int | str] = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "provider" and part in ("vagrant", "static"):
            continue
        cleaned.append(part)
    return _path(tuple(cleaned))


def semantic_problems(cluster: Cluster, base_dir: Path | None = None) -> list[str]:
    """Checks that span fields: counts, uniqueness, subnets, versions, static host reachability data."""
    spec = cluster.spec
    return [
        *version_problems(spec.kubernetes.version),
        *_role_problems(spec.nodes),
        *_node_problems(spec, base_dir),
        *_subnet_problems(spec),
        *_mirror_problems(spec.artifacts),
        *_pki_problems(spec.pki),
    ]


def _pki_problems(pki: PkiSpec) -> list[str]:
    if pki.leaf > CA_VALIDITY:
        return [
            f"spec.pki.leafValidity: {pki.leaf_validity} is longer than the CAs' {CA_VALIDITY.days}d: a leaf "
            f"cannot outlive the CA that signs it; use {CA_VALIDITY.days}d or less"
        ]
    if pki.leaf <= pki.margin:
        return [
            f"spec.pki.leafValidity: {pki.leaf_validity} is not longer than spec.pki.renewBefore "
            f"({pki.renew_before}): every `up` would find every certificate due and issue it again; "
            "make renewBefore a fraction of the lifetime (for example leafValidity: 2h, renewBefore: 30m)"
        ]
    return []


def version_problems(version: str) -> list[str]:
    if not VERSION_PATTERN.match(version):
        return [
            f"spec.kubernetes.version: {_show(version)} is not of the form vMAJOR.MINOR.PATCH; "
            f"use one of {', '.join(SUPPORTED)}"
        ]
    if version not in SUPPORTED:
        return [f"spec.kubernetes.version: {_show(version)} is not supported; use one of {', '.join(SUPPORTED)}"]
    return []


def _role_problems(nodes: list[Node]) -> list[str]:
    problems = [
        f"spec.nodes: no node has role {role!r}; at least 1 master and 1 worker are needed"
        for role in ("master", "worker")
        if not any(n.role == role for n in nodes)
    ]
    masters = [n.name for n in nodes if n.role == "master"]
    count = len(masters)
    if masters and count not in SUPPORTED_MASTER_COUNTS:
        if count % 2 == 0:
            # etcd stays available while more than half of its members are: n survives (n - 1) // 2 failures
            why = (
                f"etcd (one member per master) needs a majority of its members up, so {count} masters survive "
                f"no more failures than {count - 1}: an even count adds a machine and no fault tolerance"
            )
        else:
            why = f"{count} etcd members (one per master) are more than supported: every write waits for a majority"
        counts = [str(c) for c in SUPPORTED_MASTER_COUNTS]
        allowed = f"{', '.join(counts[:-1])} or {counts[-1]}" if len(counts) > 1 else counts[0]
        problems.append(
            f"spec.nodes: {count} nodes have role 'master' ({', '.join(masters)}); {why}; "
            f"use {allowed} masters and give the other nodes role 'worker'"
        )
    return problems


def _node_problems(spec: ClusterBody, base_dir: Path | None) -> list[str]:
    problems: list[str] = []
    net = spec.network
    vagrant = isinstance(spec.provider, VagrantProvider)
    # without a valid per-node prefix there is no per-node count; _subnet_problems reports the prefix
    per_node = (
        2 ** (net.pod_subnet_per_node_prefix - net.pod_subnet.prefixlen)
        if net.pod_subnet_per_node_prefix > net.pod_subnet.prefixlen
        else None
    )
    seen_names: dict[str, int] = {}
    seen_addresses: dict[ipaddress.IPv4Address, int] = {}
    for i, node in enumerate(spec.nodes):
        where = f"spec.nodes[{i}]"
        if node.name in seen_names:
            problems.append(
                f"{where}.name: {node.name!r} is already used by spec.nodes[{seen_names[node.name]}]; "
                "node names must be unique"
            )
        seen_names.setdefault(node.name, i)
        if isinstance(spec.provider, StaticProvider):
            problems.extend(_static_ssh_problems(where, node, base_dir))
        if node.address is None:
            problems.append(f"{where}.address: required field is missing; give the node's IPv4 address")
            continue
        if node.address in seen_addresses:
            problems.append(
                f"{where}.address: {str(node.address)!r} is already used by "
                f"spec.nodes[{seen_addresses[node.address]}]; node addresses must be unique"
            )
        seen_addresses.setdefault(node.address, i)
        if node.address not in net.node_subnet or node.address in (
            net.node_subnet.network_address,
            net.node_subnet.broadcast_address,
        ):
            problems.append(
                f"{where}.address: {str(node.address)!r} is not a host address in "
                f"spec.network.nodeSubnet {net.node_subnet}; pick an address inside it"
            )
        elif vagrant and node.address == net.node_subnet.network_address + 1:
            problems.append(
                f"{where}.address: {str(node.address)!r} is the host's own address on spec.network.nodeSubnet "
                f"{net.node_subnet} (vagrant-libvirt gives the first address to the host's bridge); "
                f"use a later one, such as {net.node_subnet.network_address + 10}"
            )
        elif per_node is not None and _offset(node, net.node_subnet) >= per_node:
            problems.append(
                f"{where}.address: {str(node.address)!r} is host number {_offset(node, net.node_subnet)} of "
                f"the node subnet, but spec.network.podSubnet {net.pod_subnet} holds only {per_node} "
                f"/{net.pod_subnet_per_node_prefix} per-node subnets; use a larger podSubnet or a "
                "lower host number"
            )
    return problems


def _subnet_problems(spec: ClusterBody) -> list[str]:
    problems: list[str] = []
    net = spec.network
    if net.pod_subnet_per_node_prefix <= net.pod_subnet.prefixlen:
        problems.append(
            f"spec.network.podSubnetPerNodePrefix: {net.pod_subnet_per_node_prefix} must be longer than "
            f"the podSubnet prefix /{net.pod_subnet.prefixlen}"
        )
    elif 2 ** (net.pod_subnet_per_node_prefix - net.pod_subnet.prefixlen) < len(spec.nodes):
        problems.append(
            f"spec.network.podSubnet: {net.pod_subnet} holds "
            f"{2 ** (net.pod_subnet_per_node_prefix - net.pod_subnet.prefixlen)} per-node "
            f"/{net.pod_subnet_per_node_prefix} subnets, fewer than the {len(spec.nodes)} nodes; "
            "use a larger podSubnet or a longer podSubnetPerNodePrefix"
        )
    subnets = {"nodeSubnet": net.node_subnet, "podSubnet": net.pod_subnet, "serviceSubnet": net.service_subnet}
    names = list(subnets)
    for a_index, a in enumerate(names):
        for b in names[a_index + 1 :]:
            if subnets[a].overlaps(subnets[b]):
                problems.append(
                    f"spec.network.{b}: {subnets[b]} overlaps spec.network.{a} {subnets[a]}; "
                    "node, pod and service subnets must be disjoint"
                )
    for name, subnet in subnets.items():
        example = SUBNET_EXAMPLES[name]
        for special, what in UNUSABLE_RANGES:
            if subnet.overlaps(special):
                problems.append(
                    f"spec.network.{name}: {subnet} overlaps {what} {special}, which no cluster network can use; "
                    f"use a private range such as {example}"
                )
                break  # one line per subnet is enough: 0.0.0.0/0 would overlap every range
        if isinstance(spec.provider, VagrantProvider) and subnet.overlaps(VAGRANT_MANAGEMENT_SUBNET):
            problems.append(
                f"spec.network.{name}: {subnet} overlaps Vagrant's management network {VAGRANT_MANAGEMENT_SUBNET} "
                f"(every VM's first interface); pick another, such as {example}"
            )
    if net.service_subnet.prefixlen > SERVICE_SUBNET_MAX_PREFIX:
        problems.append(
            f"spec.network.serviceSubnet: {net.service_subnet} holds {net.service_subnet.num_addresses} "
            f"address(es), too few: the apiserver's service takes the 1st and cluster DNS the 10th; "
            f"use a /{SERVICE_SUBNET_MAX_PREFIX} or larger, such as {SUBNET_EXAMPLES['serviceSubnet']}"
        )
    return problems


def _mirror_problems(artifacts: ArtifactsSpec) -> list[str]:
    field, url = "spec.artifacts.mirror", artifacts.mirror
    example = "such as http://192.168.56.1:8080/"
    if not url:
        if artifacts.source == "mirror":
            return [
                f"{field}: required when spec.artifacts.source is 'mirror'; "
                "give the mirror's base URL (http://host:port/)"
            ]
        return []
    if not re.match(r"^(https?|file)://", url):
        return [f"{field}: {_show(url)} is not a URL; use http://, https:// or file://"]
    if any(c.isspace() or not c.isprintable() for c in url):
        return [f"{field}: {_show(url)} holds spaces or control characters; percent-encode them (%20)"]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # reading it checks it: 'host:99999' and 'host:x' raise ValueError
    except ValueError as exc:
        return [f"{field}: {_show(url)} is not a valid URL ({exc}); give the mirror's base URL {example}"]
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.strip("/"):
            return [f"{field}: {_show(url)} is not a local folder's URL; write file:///path/to/mirror"]
    elif not parts.hostname:
        return [f"{field}: {_show(url)} has no host; give the mirror's base URL with its host, {example}"]
    return []


def _static_ssh_problems(where: str, node: Node, base_dir: Path | None) -> list[str]:
    if node.ssh is None or node.ssh.key is None:
        return [
            f"{where}.ssh.key: required for a static host; give the path of the SSH private key "
            f"that logs in to {node.name}"
        ]
    key = Path(_absolute_key(str(node.ssh.key), base_dir or Path.cwd()))
    problem = _key_file_problem(key)
    return [f"{where}.ssh.key: {_show(str(node.ssh.key))} {problem}"] if problem else []


def _key_file_problem(key: Path) -> str | None:
    """What makes ssh refuse this private key file, checked here so it is not found deep inside Ansible."""
    try:
        info = key.stat()
    except PermissionError:
        return f"cannot be reached by user {_current_user()} (permission denied); make it readable to that user"
    except (OSError, ValueError):
        return "is not a file; give an existing private key path"
    if not stat.S_ISREG(info.st_mode):
        return "is not a file; give an existing private key path"
    try:
        with key.open("rb") as stream:
            head = stream.read(MAX_KEY_BYTES)
    except PermissionError:
        return f"cannot be read by user {_current_user()} (permission denied); make it readable to that user"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}; give a readable private key file"
    if not head.strip():
        return "is empty; give the private key file (ssh-keygen writes one)"
    if PUBLIC_KEY.match(head):
        hint = f" ({key.with_suffix('')})" if key.suffix == ".pub" and key.with_suffix("").is_file() else ""
        return f"is a public key; give the private key, usually the same path without .pub{hint}"
    if not PRIVATE_KEY.search(head):
        return "holds no SSH private key (no '-----BEGIN ... PRIVATE KEY-----' line); give the file ssh -i takes"
    mode = stat.S_IMODE(info.st_mode)
    # ssh's own rule (sshkey_perm_ok): a key of the user's that group or others may use is refused
    if info.st_uid == os.getuid() and mode & 0o077:
        return (
            f"has mode {mode:04o}, open to group or others, and ssh refuses such a key; "
            f"run chmod 600 {shlex.quote(str(key))}"
        )
    return None


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry, as in some containers
        return f"uid {os.getuid()}"
