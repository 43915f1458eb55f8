"""Where caches and per-cluster state live. Both are outside the repository.

- cache (artifacts, box, Go build cache): $PROVISIONER_CACHE, else $XDG_CACHE_HOME/provisioner,
  else ~/.cache/provisioner. Shared by every cluster; `destroy` never touches it.
- state (generated inventory, PKI, kubeconfig, VM disks, run logs): $PROVISIONER_STATE/<cluster>,
  else $XDG_STATE_HOME/provisioner/<cluster>, else ~/.local/state/provisioner/<cluster>.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
ROLES = REPO_ROOT / "playbooks" / "roles"


def cache_root() -> Path:
    if env := os.environ.get("PROVISIONER_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "provisioner"


def state_root() -> Path:
    if env := os.environ.get("PROVISIONER_STATE"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "provisioner"


def state_dir(cluster: str) -> Path:
    return state_root() / cluster


def default_spec() -> Path:
    return REPO_ROOT / "inventories" / "lab" / "cluster.yaml"


def role_defaults(role: str) -> dict[str, Any]:
    """A role's defaults/main.yml: where a bound or a name its tasks use is given, once, for the Python
    code that must agree with it too."""
    defaults: dict[str, Any] = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    return defaults
