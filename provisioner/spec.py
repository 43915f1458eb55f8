"""The cluster spec: one versioned YAML document, validated here, the single source of truth.

Everything else (inventory, group vars, the Vagrant machine list) is derived from :class:`Cluster`.
Validation reports one line per problem, each naming the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from provisioner.errors import SpecError
from provisioner.versions import DEFAULT_KUBERNETES, SUPPORTED

API_VERSION = "provisioner.dev/v1alpha1"
KIND = "Cluster"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
VERSION_PATTERN = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


class Model(BaseModel):
    """Base for every spec section: unknown keys are errors, YAML keys are camelCase."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, strict=False
    )


class Metadata(Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="cluster name, a DNS label")]


class KubernetesSpec(Model):
    version: str = DEFAULT_KUBERNETES


class NetworkSpec(Model):
    node_subnet: ipaddress.IPv4Network = Field(description="network the nodes' addresses live in")
    pod_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.244.0.0/16")
    pod_subnet_per_node_prefix: Annotated[int, Field(ge=16, le=28)] = 24
    service_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/12")
    proxy_mode: Literal["iptables", "nftables"] = "iptables"

    @property
    def apiserver_service_ip(self) -> ipaddress.IPv4Address:
        return self.service_subnet.network_address + 1

    @property
    def dns_service_ip(self) -> ipaddress.IPv4Address:
        return self.service_subnet.network_address + 10


class ArtifactsSpec(Model):
    source: Literal["auto", "release", "mirror", "build"] = "auto"
    mirror: str | None = Field(default=None, description="base URL laid out like the official release URLs")
    cache_dir: Path | None = None


class SSHSpec(Model):
    user: Annotated[str, Field(min_length=1)] = "root"
    key: Path | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 22


class Node(Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    role: Literal["master", "worker"]
    address: ipaddress.IPv4Address | None = None
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
        subnets = list(net.pod_subnet.subnets(new_prefix=net.pod_subnet_per_node_prefix))
        return {n.name: subnets[_offset(n, net.node_subnet)] for n in self.spec.nodes if n.address}

    def node(self, name: str) -> Node:
        for n in self.spec.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def _offset(node: Node, subnet: ipaddress.IPv4Network) -> int:
    assert node.address is not None
    return int(node.address) - int(subnet.network_address)


# --- loading and error reporting -------------------------------------------------------------------


def load(path: Path) -> Cluster:
    """Read, parse and validate a spec file. Raises SpecError listing every problem found."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(where, [f"{where}: file not found; pass an existing spec with --spec"]) from None
    except OSError as exc:
        raise SpecError(where, [f"{where}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(where, [f"{where}: not valid YAML{at}: {problem}; fix the syntax"]) from None
    return parse(data, where=where, base_dir=path.parent)


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
            key = Path(ssh["key"]).expanduser()
            ssh["key"] = str(key if key.is_absolute() else (base_dir / key).resolve())
    return data


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys a mapping at `loc` accepts, found by walking the models along the path."""
    model: Any = Cluster
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            # a discriminated union's tag (e.g. "vagrant") sits in the location; pick that member
            model = _union_member(model, str(part))
            if model is None:
                return []
            continue
        field = next((f for name, f in fields.items() if (f.alias or name) == part), None)
        if field is None:
            return []
        model = _unwrap(field.annotation)
    fields = getattr(model, "model_fields", {})
    return sorted(f.alias or name for name, f in fields.items())


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
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        value = err.get("input")
        path = _clean_path(loc)
        if kind == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc[:-1])) or "none"
            yield f"{path}: unknown key {loc[-1]!r}; allowed keys here: {allowed}"
        elif kind == "missing":
            yield f"{path}: required field is missing; add it"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            yield f"{path}: {value!r} is not allowed; expected one of {expected}"
        elif kind == "union_tag_invalid":
            expected = err.get("ctx", {}).get("expected_tags", "")
            yield f"{path}: type {err.get('ctx', {}).get('tag')!r} is not a known provider; expected {expected}"
        elif kind == "union_tag_not_found":
            yield f"{path}: required field 'type' is missing; set type to 'vagrant' or 'static'"
        elif kind == "string_pattern_mismatch":
            yield (
                f"{path}: {value!r} is not a valid name; use lowercase letters, digits and '-', "
                "starting and ending with a letter or digit (at most 63 characters)"
            )
        elif kind == "ip_v4_network":
            yield (
                f"{path}: {value!r} is not an IPv4 network; use CIDR form with no host bits set, such as 10.244.0.0/16"
            )
        elif kind == "ip_v4_address":
            yield f"{path}: {value!r} is not an IPv4 address; use dotted form such as 192.168.56.11"
        else:
            yield f"{path}: {value!r} is invalid: {err['msg'][0].lower()}{err['msg'][1:]}"


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
    problems: list[str] = []
    spec = cluster.spec
    net = spec.network

    version = spec.kubernetes.version
    if not VERSION_PATTERN.match(version):
        problems.append(
            f"spec.kubernetes.version: {version!r} is not of the form vMAJOR.MINOR.PATCH; "
            f"use one of {', '.join(SUPPORTED)}"
        )
    elif version not in SUPPORTED:
        problems.append(f"spec.kubernetes.version: {version!r} is not supported; use one of {', '.join(SUPPORTED)}")

    for role in ("master", "worker"):
        if not any(n.role == role for n in spec.nodes):
            problems.append(f"spec.nodes: no node has role {role!r}; at least 1 master and 1 worker are needed")

    seen_names: dict[str, int] = {}
    seen_addresses: dict[ipaddress.IPv4Address, int] = {}
    per_node = 2 ** (net.pod_subnet_per_node_prefix - net.pod_subnet.prefixlen)
    for i, node in enumerate(spec.nodes):
        where = f"spec.nodes[{i}]"
        if node.name in seen_names:
            problems.append(
                f"{where}.name: {node.name!r} is already used by spec.nodes[{seen_names[node.name]}]; "
                "node names must be unique"
            )
        seen_names.setdefault(node.name, i)
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
        elif _offset(node, net.node_subnet) >= per_node:
            problems.append(
                f"{where}.address: {str(node.address)!r} is host number {_offset(node, net.node_subnet)} of "
                f"the node subnet, but spec.network.podSubnet {net.pod_subnet} holds only {per_node} "
                f"/{net.pod_subnet_per_node_prefix} per-node subnets; use a larger podSubnet or a "
                "lower host number"
            )
        if isinstance(spec.provider, StaticProvider):
            problems.extend(_static_ssh_problems(where, node, base_dir))

    if net.pod_subnet_per_node_prefix <= net.pod_subnet.prefixlen:
        problems.append(
            f"spec.network.podSubnetPerNodePrefix: {net.pod_subnet_per_node_prefix} must be longer than "
            f"the podSubnet prefix /{net.pod_subnet.prefixlen}"
        )
    elif per_node < len(spec.nodes):
        problems.append(
            f"spec.network.podSubnet: {net.pod_subnet} holds {per_node} per-node "
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

    if spec.artifacts.source == "mirror" and not spec.artifacts.mirror:
        problems.append(
            "spec.artifacts.mirror: required when spec.artifacts.source is 'mirror'; "
            "give the mirror's base URL (http://host:port/)"
        )
    if spec.artifacts.mirror and not re.match(r"^(https?|file)://", spec.artifacts.mirror):
        problems.append(
            f"spec.artifacts.mirror: {spec.artifacts.mirror!r} is not a URL; use http://, https:// or file://"
        )
    return problems


def _static_ssh_problems(where: str, node: Node, base_dir: Path | None) -> list[str]:
    if node.ssh is None or node.ssh.key is None:
        return [
            f"{where}.ssh.key: required for a static host; give the path of the SSH private key "
            f"that logs in to {node.name}"
        ]
    key = node.ssh.key if node.ssh.key.is_absolute() or base_dir is None else base_dir / node.ssh.key
    if not key.expanduser().is_file():
        return [f"{where}.ssh.key: {str(node.ssh.key)!r} is not a file; give an existing private key path"]
    return []
