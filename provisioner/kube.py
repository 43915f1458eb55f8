"""The one kubectl client: the artifact set's kubectl with the cluster's admin kubeconfig, one error model.

Used by `up`, `scale`, `drift`, `verify`, the tests and the benchmarks. Every call is a subprocess started
under the lab's command prefix (``ip netns exec NAME``) when there is one, so no packet for the lab ever
leaves from the host's own network namespace.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import ProvisionerError


class KubectlError(ProvisionerError):
    """A kubectl command failed (API unreachable, object rejected, ...)."""


@dataclass(frozen=True)
class Kubectl:
    """kubectl from the artifact set, pointed at the cluster's admin kubeconfig."""

    binary: Path
    kubeconfig: Path
    prefix: Sequence[str] = ()

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                self.command(*args), input=input, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise KubectlError(
                f"kubectl {' '.join(args)}", f"no answer within {timeout:.0f}s", "check that the apiserver is up"
            ) from None
        if check and proc.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)}",
                proc.stderr.strip() or f"exit code {proc.returncode}",
                "check the cluster with `provisioner status` and the admin kubeconfig",
            )
        return proc

    def json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.run(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, docs: Sequence[dict[str, Any]], namespace: str | None = None) -> None:
        args = ["apply", "-f", "-"] + ([f"--namespace={namespace}"] if namespace else [])
        self.run(*args, input=yaml.safe_dump_all(docs, sort_keys=False))
