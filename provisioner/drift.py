"""Drift: what changed in the cluster since the YAML files were applied (`kubectl scale`, `kubectl edit`, ...).

Only the fields a file sets are compared, so defaults the API server fills in are never reported.
Each difference names the object, the field path, the file's value and the live value. Secret values
(data and stringData, in the file or in the cluster) are never printed in any form: each becomes REDACTED,
and only the keys show.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import yaml

from provisioner.errors import ProvisionerError


class DriftError(ProvisionerError):
    """The manifests could not be read or compared (exit code 2: neither 'no drift' nor 'drift')."""

    exit_code = 2


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()
REDACTED = "<redacted>"
# The fields of a Secret that hold its values (stringData is written as data by the API).
SECRET_VALUE_FIELDS = ("data", "stringData")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Keys that identify an element of a list of objects, tried in order (containers by name, ports by port, ...).
MERGE_KEYS = ("name", "mountPath", "containerPort", "port", "devicePath", "ip", "topologyKey")


class CommandResult(Protocol):
    returncode: int
    stdout: str
    stderr: str


class KubectlLike(Protocol):
    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> CommandResult: ...


@dataclass(frozen=True)
class Difference:
    file: str
    kind: str
    namespace: str
    name: str
    path: str  # field path, e.g. spec.template.spec.containers[name=web].image; "" for a missing object
    desired: Any  # the file's value
    live: Any  # the cluster's value (ABSENT when the field or the object is missing)

    @property
    def object(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    def line(self) -> str:
        if not self.path:
            return f"{self.object}: missing from the cluster (defined in {self.file})"
        return f"{self.object}: {self.path}: {_show(self.desired)} (file) → {_show(self.live)} (live)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "object": self.object,
            "path": self.path,
            "desired": None if self.desired is ABSENT else self.desired,
            "live": None if self.live is ABSENT else self.live,
            "missing": self.live is ABSENT,
        }


def _show(value: Any) -> str:
    if value is ABSENT:
        return "<absent>"
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 80 else text[:79] + "…"


# --- reading manifests -------------------------------------------------------------------------------


def load_manifests(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every object in the folder's YAML/JSON files (recursively, sorted), with the file it came from."""
    if not directory.is_dir():
        raise DriftError(
            str(directory), "is not a folder", "pass the folder holding your YAML manifests with --manifests"
        )
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    objects: list[tuple[str, dict[str, Any]]] = []
    for path in files:
        rel = str(path.relative_to(directory))
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            raise DriftError(rel, f"is not valid YAML ({exc})", "fix the file or move it out of the folder") from None
        for doc in docs:
            for obj in _expand(doc):
                if not obj.get("kind") or not (obj.get("metadata") or {}).get("name"):
                    raise DriftError(rel, "holds an object without kind or metadata.name", "give every object both")
                objects.append((rel, obj))
    if not objects:
        raise DriftError(str(directory), "holds no Kubernetes objects in *.yaml, *.yml or *.json files", "")
    return objects


def _expand(doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        return []
    if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
        return [item for item in doc.get("items") or [] if isinstance(item, dict)]
    return [doc]


# --- comparing ------------------------------------------------------------------------------------------


def diff_object(desired: dict[str, Any], live: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(path, file value, live value) for every field the file sets that the live object does not match."""
    desired = dict(desired)
    desired.pop("status", None)  # status is observed, never desired
    secret = desired.get("kind") == "Secret"
    if secret and "stringData" in desired:
        # stringData is write-only: the API stores it base64-encoded under data.
        data = dict(desired.get("data") or {})
        for key, value in (desired.pop("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        desired["data"] = data
    found = _diff(desired, live, "")
    if secret:
        found = [(p, _redacted(d), _redacted(v)) if _in_secret_data(p) else (p, d, v) for p, d, v in found]
    return found


def _in_secret_data(path: str) -> bool:
    return path.split(".", 1)[0] in SECRET_VALUE_FIELDS


def _redacted(value: Any) -> Any:
    """The value with every leaf replaced by REDACTED; the keys of a map stay (they say which entry)."""
    if value is ABSENT:
        return ABSENT
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return REDACTED


def _without_secret_values(obj: dict[str, Any]) -> dict[str, Any]:
    """The object fit to print: for a Secret, a copy whose data and stringData values are REDACTED."""
    if obj.get("kind") != "Secret":
        return obj
    return {k: _redacted(v) if k in SECRET_VALUE_FIELDS else v for k, v in obj.items()}


def _diff(desired: Any, live: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [(path, desired, live)]
        out: list[tuple[str, Any, Any]] = []
        for key, value in desired.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in live:
                # An empty value in a file and an omitted field in the API mean the same thing.
                if value not in (None, {}, [], "", False, 0):
                    out.append((sub, value, ABSENT))
                continue
            out += _diff(value, live[key], sub)
        return out
    if isinstance(desired, list):
        if not isinstance(live, list):
            return [(path, desired, live if live is not None else ABSENT)]
        key = _merge_key(desired, live)
        if key is not None:
            return _diff_keyed(desired, live, path, key)
        if len(desired) != len(live) or not all(isinstance(d, dict) for d in desired):
            return [] if _same_list(desired, live) else [(path, desired, live)]
        out = []
        for i, (d, v) in enumerate(zip(desired, live, strict=True)):
            out += _diff(d, v, f"{path}[{i}]")
        return out
    return [] if _same_scalar(desired, live, path) else [(path, desired, live)]


def _merge_key(desired: list[Any], live: list[Any]) -> str | None:
    if not desired or not all(isinstance(d, dict) for d in desired + live):
        return None
    for key in MERGE_KEYS:
        values = [d.get(key) for d in desired]
        unique = all(v is not None for v in values) and len(set(map(str, values))) == len(values)
        if unique and all(key in v for v in live):
            return key
    return None


def _diff_keyed(
    desired: list[dict[str, Any]], live: list[dict[str, Any]], path: str, key: str
) -> list[tuple[str, Any, Any]]:
    by_key = {str(v.get(key)): v for v in live}
    out: list[tuple[str, Any, Any]] = []
    for d in desired:
        sub = f"{path}[{key}={d[key]}]"
        match = by_key.get(str(d[key]))
        if match is None:
            out.append((sub, d, ABSENT))
        else:
            out += _diff(d, match, sub)
    return out


def _same_list(desired: list[Any], live: list[Any]) -> bool:
    return len(desired) == len(live) and all(_same_scalar(d, v, "") for d, v in zip(desired, live, strict=True))


_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes resource quantity ("500m", "1Gi", 2) as a number, or None when it is not one."""
    if isinstance(value, bool):
        return None
    m = _QUANTITY.match(str(value))
    if not m:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2)]
    except InvalidOperation:
        return None


def _same_scalar(desired: Any, live: Any, path: str) -> bool:
    if desired == live:
        return True
    if isinstance(desired, (dict, list)) or isinstance(live, (dict, list)) or live is None:
        return False
    # The API normalises quantities ("0.5" cpu becomes "500m"); compare their values.
    if ".resources." in f".{path}." or path.startswith("spec.hard"):
        a, b = quantity(desired), quantity(live)
        if a is not None and b is not None:
            return a == b
    # YAML may carry a port as "80" where the API returns 80.
    return not isinstance(desired, bool) and not isinstance(live, bool) and str(desired) == str(live)


# --- against the cluster ------------------------------------------------------------------------------


def drift(manifests_dir: Path, kubectl: KubectlLike) -> list[Difference]:
    """Compare every object in the folder with its live counterpart. Missing objects are differences too."""
    differences: list[Difference] = []
    for file, desired in load_manifests(manifests_dir):
        meta = desired["metadata"]
        kind, name, namespace = str(desired["kind"]), str(meta["name"]), str(meta.get("namespace") or "")
        live = live_object(kubectl, file, desired)
        if live is None:
            differences.append(Difference(file, kind, namespace, name, "", _without_secret_values(desired), ABSENT))
            continue
        namespace = namespace or str(live.get("metadata", {}).get("namespace") or "")
        for path, want, got in diff_object(desired, live):
            differences.append(Difference(file, kind, namespace, name, path, want, got))
    return differences


def live_object(kubectl: KubectlLike, file: str, desired: dict[str, Any]) -> dict[str, Any] | None:
    """The live object for a manifest (kubectl resolves kind, API group and default namespace), or None."""
    proc = kubectl.run(
        "get", "-f", "-", "-o", "json", "--ignore-not-found", input=yaml.safe_dump(desired), check=False, timeout=60
    )
    label = f"{desired['kind']} {desired['metadata']['name']} in {file}"
    if proc.returncode != 0:
        raise DriftError(
            label, proc.stderr.strip() or f"kubectl exit code {proc.returncode}", "check the cluster and the file"
        )
    if not proc.stdout.strip():
        return None
    live: dict[str, Any] = json.loads(proc.stdout)
    if live.get("kind") == "List":
        items = live.get("items") or []
        return items[0] if items else None
    return live
