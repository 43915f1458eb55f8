"""The admin machine as a user expects it after `up`: kubectl on PATH and a context in their kubeconfig.

- `user_kubeconfig`: the cluster's admin kubeconfig as seen from the user's own shell. For an isolated
  lab its server is the loopback forwarder (provisioner/forwarder.py); otherwise the apiserver itself.
  Its names are the cluster's (cluster and context `<cluster>`, user `admin@<cluster>`), so merging it
  never replaces another cluster's entries.
- `merge` adds those three entries to ~/.kube/config (or the first file of $KUBECONFIG), the way kind
  does, and records what it found there; `unmerge` (on destroy) removes exactly them and puts back
  the current context it found, and a file that did not exist before goes again.
- `link_kubectl` puts the cluster's own kubectl (the artifact set's, the cluster's version) where PATH
  finds it, unless a kubectl that is not ours already sits there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import ProvisionerError
from provisioner.state import State

SECTIONS = ("clusters", "users", "contexts")


def user_name(cluster_name: str) -> str:
    return f"admin@{cluster_name}"


def default_target() -> Path:
    """Where kubectl writes: the first file of $KUBECONFIG, else ~/.kube/config."""
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return Path(first).expanduser() if first else Path.home() / ".kube" / "config"


def write_user_kubeconfig(state: State, cluster_name: str, server: str) -> Path:
    """The admin kubeconfig with the server the user's shell can reach and the cluster's own names."""
    doc: dict[str, Any] = yaml.safe_load(state.kubeconfig.read_text())
    user = user_name(cluster_name)
    doc["clusters"][0]["cluster"]["server"] = server
    doc["users"][0]["name"] = user
    doc["contexts"] = [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}]
    doc["current-context"] = cluster_name
    _write_private(state.user_kubeconfig, yaml.safe_dump(doc, sort_keys=False))
    return state.user_kubeconfig


@dataclass(frozen=True)
class Merged:
    """What `merge` found in the target, so that `unmerge` can put it back."""

    path: Path
    created: bool  # the file did not exist before the first merge
    previous_context: str | None  # its current-context before the first merge
    keys: tuple[str, ...]  # its top-level keys before the first merge


def merge(state: State, cluster_name: str, target: Path) -> Merged:
    """Add (or refresh) this cluster's cluster, user and context in `target`.

    The first merge makes the cluster the current context, as kind does, and records the one it
    replaced; later merges (every `up`) refresh the entries and leave the current context alone.
    """
    record = _load_record(state)
    first = record is None or record.path != target
    if first:
        if record is not None:
            unmerge(state, cluster_name)  # the user's $KUBECONFIG changed: move, do not copy
        existing = _read(target) or {}
        record = Merged(target, not target.exists(), existing.get("current-context"), tuple(existing))
        state.merged_file.write_text(
            json.dumps(
                {
                    "path": str(target),
                    "created": record.created,
                    "previous_context": record.previous_context,
                    "keys": list(record.keys),
                }
            )
            + "\n"
        )
    assert record is not None
    ours: dict[str, Any] = yaml.safe_load(state.user_kubeconfig.read_text())
    theirs = _read(target) or {}
    theirs.setdefault("apiVersion", "v1")
    theirs.setdefault("kind", "Config")
    for section in SECTIONS:
        names = {entry["name"] for entry in ours[section]}
        kept = [e for e in theirs.get(section) or [] if e.get("name") not in names]
        theirs[section] = kept + ours[section]
    if first or not theirs.get("current-context"):
        theirs["current-context"] = cluster_name
    text = yaml.safe_dump(theirs, sort_keys=False)
    if not target.exists() or target.read_text() != text:
        _write_private(target, text)
    return record


def merged_path(state: State) -> Path | None:
    """The user's kubeconfig an earlier `up` merged this cluster into, if any."""
    record = _load_record(state)
    return record.path if record is not None else None


def unmerge(state: State, cluster_name: str) -> Path | None:
    """Remove what `merge` added for this cluster; returns the file it edited or removed.

    What stays is what was there: the other entries, the current context (put back when it was ours),
    and no key the file did not have; a file that `merge` created goes when nothing else is left in it.
    """
    record = _load_record(state)
    state.merged_file.unlink(missing_ok=True)
    if record is None:
        return None
    theirs = _read(record.path)
    if theirs is None:
        return record.path
    drop = {"clusters": cluster_name, "contexts": cluster_name, "users": user_name(cluster_name)}
    for section, name in drop.items():
        theirs[section] = [e for e in theirs.get(section) or [] if e.get("name") != name]
    if theirs.get("current-context") == cluster_name:
        contexts = {c.get("name") for c in theirs["contexts"]}
        previous = record.previous_context
        theirs["current-context"] = previous if previous in contexts else ""
    added = {"apiVersion", "kind", "current-context", *SECTIONS} - set(record.keys)
    for key in added:
        if not theirs.get(key) or key in ("apiVersion", "kind"):
            theirs.pop(key, None)
    if record.created and not any(theirs.get(s) for s in SECTIONS):
        record.path.unlink(missing_ok=True)
        return record.path
    _write_private(record.path, yaml.safe_dump(theirs, sort_keys=False) if theirs else "")
    return record.path


def link_kubectl(kubectl: Path, directory: Path | None = None) -> tuple[Path | None, str]:
    """Link `kubectl` into /usr/local/bin (root) or ~/.local/bin; returns the link and a line for the user."""
    if directory is None:
        system = Path("/usr/local/bin")
        directory = system if os.access(system, os.W_OK) else Path.home() / ".local" / "bin"
    link = directory / "kubectl"
    if link.exists() or link.is_symlink():
        if not link.is_symlink() or not _ours(link, kubectl):
            return None, f"{link} is not provisioner's: run the cluster's own kubectl as `provisioner kubectl ...`"
        if link.resolve() != kubectl.resolve():
            link.unlink()
    if not link.is_symlink():
        directory.mkdir(parents=True, exist_ok=True)
        link.symlink_to(kubectl)
    found = shutil.which("kubectl")
    if found is None or Path(found).resolve() != kubectl.resolve():
        shadow = f" ({found} comes first)" if found else ""
        return link, f'kubectl is linked at {link} but PATH does not find it{shadow}: export PATH="{directory}:$PATH"'
    return link, f"kubectl: {link} -> {kubectl}"


# --- internals -------------------------------------------------------------------------------------


def _ours(link: Path, kubectl: Path) -> bool:
    """A link this tool made points into the artifact cache (any version's set)."""
    target = Path(os.readlink(link))
    cache = kubectl.parents[2]  # <cache>/artifacts/<version>/bin/kubectl -> <cache>/artifacts
    return target.name == "kubectl" and cache in target.parents


def _load_record(state: State) -> Merged | None:
    try:
        data = json.loads(state.merged_file.read_text())
        return Merged(
            Path(data["path"]), bool(data["created"]), data.get("previous_context"), tuple(data.get("keys", ()))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read(path: Path) -> dict[str, Any] | None:
    """The kubeconfig at `path`; None when there is none, {} when it is empty."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _not_a_kubeconfig(path, str(exc).splitlines()[0]) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise _not_a_kubeconfig(path, f"its top level is a {type(doc).__name__}, not a mapping")
    for section in SECTIONS:
        entries = doc.get(section) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise _not_a_kubeconfig(path, f"{section!r} is not a list of named entries")
    return doc


def _not_a_kubeconfig(path: Path, cause: str) -> ProvisionerError:
    return ProvisionerError(
        f"kubeconfig {path}",
        f"cannot be read as a kubeconfig ({cause})",
        "repair or move it, or pass --no-merge-kubeconfig to `up`",
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # The mode above applies only to a new file; an existing kubeconfig holds keys too.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
