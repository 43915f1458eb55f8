"""The addon_apply role, run by the project's runner on this machine (localnode) with a kubectl that fails
as a busy apiserver makes it fail: an apply that timed out is tried again until it succeeds, within a bound;
an apply the API refuses fails at once (no retries hide a bad manifest)."""

from __future__ import annotations

from pathlib import Path

import localnode
import pytest

from provisioner import runner
from provisioner.errors import PlaybookError
from provisioner.events import EventBus

TIMED_OUT = (
    'error: error validating "m.yaml": error validating data: failed to download openapi: Get '
    '"https://127.0.0.1:6443/openapi/v2?timeout=32s": net/http: request canceled (Client.Timeout exceeded '
    "while awaiting headers)"
)
REFUSED = 'The ConfigMap "x" is invalid: metadata.name: Invalid value: "X_": a lowercase RFC 1123 subdomain'

# kubectl as the role calls it: `get -f` says the objects are not there; `apply -f` fails with {failure}
# for the first {fails} calls, then creates. Every apply is counted in a file beside it.
KUBECTL = """#!/bin/sh
dir=$(dirname "$0")
case " $* " in
  *" get "*) exit 1 ;;
esac
n=$(cat "$dir/applies" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$dir/applies"
if [ "$n" -le {fails} ]; then echo '{failure}' >&2; exit 1; fi
echo "configmap/x created"
"""

PLAYBOOK = """
- name: "Addons: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: Apply the manifest
      ansible.builtin.include_role:
        name: addon_apply
"""


def _apply(tmp_path: Path, fails: int, failure: str, retries: int = 4) -> None:
    """Runs the role (PlaybookError when it failed); _applies tells how many applies kubectl saw."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(KUBECTL.format(fails=fails, failure=failure))
    kubectl.chmod(0o755)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    host = localnode.one_host(
        "master",
        layout={"dirs": {"bin": str(bin_dir)}},
        addon_apply_manifest=str(manifest),
        addon_apply_kubeconfig=str(tmp_path / "kubeconfig"),
        addon_apply_retries=retries,
        addon_apply_delay=0,
    )
    state = localnode.local_state(tmp_path / "state", host, PLAYBOOK)
    runner.run_playbook(state, EventBus(), playbook=state.root / "site.yml", strategy_name="linear")


def _applies(tmp_path: Path) -> int:
    return int((tmp_path / "bin" / "applies").read_text())


def test_an_apply_that_timed_out_is_tried_again_and_succeeds(tmp_path: Path) -> None:
    _apply(tmp_path, fails=2, failure=TIMED_OUT)
    assert _applies(tmp_path) == 3
    assert (tmp_path / "m.yaml.applied").is_file()


def test_an_apply_that_keeps_timing_out_fails_after_its_retries(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError) as failed:
        _apply(tmp_path, fails=100, failure=TIMED_OUT, retries=2)
    assert "Client.Timeout exceeded" in failed.value.cause
    assert _applies(tmp_path) == 3  # the first try and two more
    assert not (tmp_path / "m.yaml.applied").exists()


def test_an_apply_the_api_refuses_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError) as failed:
        _apply(tmp_path, fails=100, failure=REFUSED)
    assert "is invalid" in failed.value.cause
    assert _applies(tmp_path) == 1
