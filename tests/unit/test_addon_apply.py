"""The addon_apply role, run by Ansible on the local host with a kubectl that fails as a busy apiserver makes
it fail: an apply that timed out is tried again until it succeeds, within a bound; an apply the API refuses
fails at once (no retries hide a bad manifest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from provisioner import runner

TIMED_OUT = (
    'error: error validating "m.yaml": error validating data: failed to download openapi: Get '
    '"https://127.0.0.1:6443/openapi/v2?timeout=32s": net/http: request canceled (Client.Timeout exceeded '
    "while awaiting headers)"
)
REFUSED = 'The ConfigMap "x" is invalid: metadata.name: Invalid value: "X_": a lowercase RFC 1123 subdomain'

# kubectl as the role calls it: `get -f` says the objects are not there; `apply -f` fails with $FAILURE for
# the first $FAILS calls, then creates. Every apply is counted in a file.
KUBECTL = """#!/bin/sh
dir=$(dirname "$0")
case " $* " in
  *" get "*) exit 1 ;;
esac
n=$(cat "$dir/applies" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$dir/applies"
if [ "$n" -le "$FAILS" ]; then echo "$FAILURE" >&2; exit 1; fi
echo "configmap/x created"
"""


def _apply(tmp_path: Path, fails: int, failure: str, retries: int = 4) -> tuple[subprocess.CompletedProcess[str], int]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(KUBECTL)
    kubectl.chmod(0o755)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"layout": {"dirs": {"bin": str(bin_dir)}}, "ansible_python_interpreter": sys.executable},
            "tasks": [
                {
                    "ansible.builtin.include_role": {"name": "addon_apply"},
                    "vars": {
                        "addon_apply_manifest": str(manifest),
                        "addon_apply_kubeconfig": str(tmp_path / "kubeconfig"),
                        "addon_apply_retries": retries,
                        "addon_apply_delay": 0,
                    },
                }
            ],
        }
    ]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = {
        **os.environ,
        "FAILS": str(fails),
        "FAILURE": failure,
        "ANSIBLE_ROLES_PATH": str(runner.PLAYBOOK_DIR / "roles"),
        "ANSIBLE_LIBRARY": str(runner.PLAYBOOK_DIR / "library"),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    applies = bin_dir / "applies"
    return done, int(applies.read_text()) if applies.exists() else 0


def test_an_apply_that_timed_out_is_tried_again_and_succeeds(tmp_path: Path) -> None:
    done, applies = _apply(tmp_path, fails=2, failure=TIMED_OUT)
    assert done.returncode == 0, done.stdout[-2000:]
    assert applies == 3
    assert (tmp_path / "m.yaml.applied").is_file()


def test_an_apply_that_keeps_timing_out_fails_after_its_retries(tmp_path: Path) -> None:
    done, applies = _apply(tmp_path, fails=100, failure=TIMED_OUT, retries=2)
    assert done.returncode != 0
    assert applies == 3  # the first try and two more
    assert "Client.Timeout exceeded" in done.stdout
    assert not (tmp_path / "m.yaml.applied").exists()


def test_an_apply_the_api_refuses_fails_at_once(tmp_path: Path) -> None:
    done, applies = _apply(tmp_path, fails=100, failure=REFUSED)
    assert done.returncode != 0
    assert applies == 1
    assert "is invalid" in done.stdout
