"""The ansible-runner adapter, driven with real Ansible against the local machine (no VM needed)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import localnode
import pytest

from provisioner import runner
from provisioner.errors import PlaybookError
from provisioner.events import EventBus, PhaseFinished, PhaseStarted, Progress, Recorder, TaskResult
from provisioner.state import State

PLAYBOOK = """
- name: "Alpha: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: Make a file
      ansible.builtin.copy:
        dest: "{{ target }}"
        content: "hello\\n"
        mode: "0644"
    - name: Probe
      ansible.builtin.command: "true"
      changed_when: false

- name: "Beta: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the marker the command prefix set
      ansible.builtin.copy:
        dest: "{{ target }}.env"
        content: "{{ lookup('ansible.builtin.env', 'PROVISIONER_TEST_PREFIX') }}\\n"
        mode: "0644"
"""

FAILING = """
- name: "Gamma: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: Break on purpose
      ansible.builtin.command: sh -c 'echo broken-disk >&2; exit 3'
      changed_when: false
"""


GATHER = """
- name: "Facts: local"
  hosts: all
  gather_facts: true  # the facts hold the environment the modules ran with (ansible_env)
  tasks:
    - name: Probe
      ansible.builtin.command: "true"
      changed_when: false
"""


@pytest.fixture
def local_state(tmp_path: Path) -> State:
    return localnode.local_state(tmp_path / "state", localnode.one_host("box"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "play.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("strategy", ["linear", "mitogen_linear"])
def test_phases_timings_and_changed_counts_then_idempotent(local_state: State, tmp_path: Path, strategy: str) -> None:
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    target = tmp_path / "out.txt"
    play = _write(tmp_path, PLAYBOOK)
    first = runner.run_playbook(
        local_state, bus, playbook=play, extravars={"target": str(target)}, strategy_name=strategy
    )
    assert first.strategy == strategy
    assert [p.name for p in first.phases] == ["alpha", "beta"]
    assert [p.changed for p in first.phases] == [1, 1]
    assert first.hosts["box"].changed == 2
    assert all(p.seconds > 0 for p in first.phases)
    assert target.read_text() == "hello\n"
    assert [e.phase for e in rec.of(PhaseStarted)] == ["alpha", "beta"]  # type: ignore[attr-defined]
    assert all(e.ok for e in rec.of(PhaseFinished))  # type: ignore[attr-defined]
    statuses = {(e.task, e.status) for e in rec.of(TaskResult)}  # type: ignore[attr-defined]
    assert ("Make a file", "changed") in statuses
    assert ("Probe", "ok") in statuses
    assert any(e.message == "Make a file" for e in rec.of(Progress))  # type: ignore[attr-defined]
    assert first.stdout.is_file()

    second = runner.run_playbook(
        local_state, bus, playbook=play, extravars={"target": str(target)}, strategy_name=strategy
    )
    assert second.changed == 0
    assert second.run_dir != first.run_dir and first.run_dir.is_dir()


def test_a_failed_task_names_phase_host_task_and_cause(local_state: State, tmp_path: Path) -> None:
    bus = EventBus()
    with pytest.raises(PlaybookError) as failure:
        runner.run_playbook(local_state, bus, playbook=_write(tmp_path, FAILING), strategy_name="linear")
    text = str(failure.value)
    assert "phase gamma" in text
    assert "'Break on purpose' on box" in text
    assert "broken-disk" in text
    assert "provisioner up" in failure.value.fix
    runs = list(local_state.runs_dir.iterdir())
    assert len(runs) == 1 and (runs[0] / "artifacts" / "run" / "stdout").is_file()


def test_ansible_runs_inside_the_command_prefix(local_state: State, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    runner.run_playbook(
        local_state,
        EventBus(),
        playbook=_write(tmp_path, PLAYBOOK),
        prefix=["env", "PROVISIONER_TEST_PREFIX=inside"],
        extravars={"target": str(target)},
    )
    assert Path(f"{target}.env").read_text() == "inside\n"


@pytest.mark.parametrize("strategy", ["linear", "mitogen_linear"])
def test_the_operators_environment_stays_out_of_the_run_dir(
    local_state: State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    """A token exported in the operator's shell is neither handed to Ansible nor written under the run dir."""
    marker = secrets.token_hex(16)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", marker)
    monkeypatch.setenv("ANSIBLE_GALAXY_TOKEN", marker)  # the operator's ANSIBLE_* are not ours either
    monkeypatch.setenv("ANSIBLE_CALLBACK_PLUGINS", f"/nonexistent/{marker}")  # ansible-runner appends to this one
    result = runner.run_playbook(local_state, EventBus(), playbook=_write(tmp_path, GATHER), strategy_name=strategy)
    assert result.hosts["box"].ok >= 2 and result.hosts["box"].failed == 0
    files = [p for p in result.run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "command" for p in files) and any(p.parent.name == "job_events" for p in files)
    assert [str(p) for p in files if marker.encode() in p.read_bytes()] == []
    # What the run does need still reaches it.
    env = json.loads((result.run_dir / "artifacts" / "run" / "command").read_text())["env"]
    assert env["PATH"] == os.environ["PATH"] and env["ANSIBLE_STRATEGY"] == strategy


def test_strategy_defaults_to_mitogen_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runner.STRATEGY_ENV, raising=False)
    assert runner.strategy() == "mitogen_linear"
    monkeypatch.setenv(runner.STRATEGY_ENV, "linear")
    assert runner.strategy() == "linear"


def test_play_names_map_to_phases() -> None:
    assert runner.phase_of("Control plane: masters") == "control plane"
    assert runner.phase_of("PKI: workers") == "pki"


SLOW = """
- name: "Delta: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: Take long
      ansible.builtin.command: sleep 60
      changed_when: false
"""

# Runs a slow playbook in a process of its own, then reports how the run ended and whether the signal's
# handler is the one the process had before the run (ansible-runner's own would have stayed, swallowing it).
# Compared with what the process started with, not with Python's default: a process started from a
# background job of a non-interactive shell inherits SIGINT ignored, and the run must give that back too.
_DRIVER = """
import signal, sys
sys.path.insert(0, sys.argv[3])
import localnode
from pathlib import Path
from provisioner import runner
from provisioner.events import EventBus
before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
state = localnode.local_state(Path(sys.argv[1]), localnode.one_host("box"))
try:
    runner.run_playbook(state, EventBus(), playbook=Path(sys.argv[2]), strategy_name="linear")
    print("finished")
except runner.Terminated:
    print("terminated", signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM])
except KeyboardInterrupt:
    print("interrupted", signal.getsignal(signal.SIGINT) is before[signal.SIGINT])
"""


@pytest.mark.parametrize(
    ("sig", "expected"), [(signal.SIGTERM, "terminated True"), (signal.SIGINT, "interrupted True")]
)
def test_a_signal_during_a_run_stops_it_and_reaches_the_caller(tmp_path: Path, sig: int, expected: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _DRIVER,
            str(tmp_path / "state"),
            str(_write(tmp_path, SLOW)),
            str(Path(__file__).parent),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list((tmp_path / "state" / "runs").glob("*/artifacts/run/job_events/*")):
        assert time.monotonic() < deadline, "the playbook never started"
        time.sleep(0.2)
    time.sleep(2)  # inside the 60 s task by now
    started = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=45)
    assert out.split("\n")[-2] == expected, err[-2000:]
    assert time.monotonic() - started < 40, "the run was not cancelled: it waited for the task"


CHECKED = """
- name: "Alpha: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: Files
      ansible.builtin.copy:
        dest: "{{ target }}/{{ item }}.txt"
        content: "{{ item }} now\\n"
        mode: "0644"
      loop: [kept, replaced, added]
      loop_control:
        label: "{{ item }}.txt"
      notify: Apply the files
    - name: Mode
      ansible.builtin.file:
        path: "{{ target }}/private.txt"
        mode: "0600"
  handlers:
    - name: Apply the files
      node_command:
        argv: [touch, "{{ target }}/applied"]
"""


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode) for p in sorted(root.rglob("*"))}


def _what(run: runner.RunResult) -> list[tuple[str, str, bool, tuple[str, ...]]]:
    return [(c.host, c.task, c.handler, c.items) for c in run.changes]


@pytest.mark.parametrize("strategy", ["linear", "mitogen_linear"])
def test_check_mode_names_what_the_real_run_then_changes_and_changes_nothing(
    local_state: State, tmp_path: Path, strategy: str
) -> None:
    """Every changed task with its items, the diffs of text files and the handlers; the real run agrees."""
    target = tmp_path / "node"
    target.mkdir()
    (target / "kept.txt").write_text("kept now\n")
    (target / "kept.txt").chmod(0o644)
    (target / "replaced.txt").write_text("replaced before\n")
    (target / "private.txt").write_text("private\n")
    (target / "private.txt").chmod(0o644)
    before = _tree(target)
    play = _write(tmp_path, CHECKED)

    def run(check: bool) -> runner.RunResult:
        return runner.run_playbook(
            local_state,
            EventBus(),
            playbook=play,
            extravars={"target": str(target)},
            strategy_name=strategy,
            check=check,
        )

    planned = run(check=True)
    assert _tree(target) == before
    assert _what(planned) == [
        ("box", "Files", False, ("replaced.txt", "added.txt")),
        ("box", "Mode", False, ()),
        ("box", "Apply the files", True, ()),
    ]
    files = {d.path: d for d in planned.changes[0].diffs}
    assert files[str(target / "replaced.txt")].text.splitlines()[-2:] == ["-replaced before", "+replaced now"]
    assert files[str(target / "added.txt")].new and "+added now" in files[str(target / "added.txt")].text
    assert [d.text for d in planned.changes[1].diffs] == ["mode: 0644 -> 0600"]
    assert planned.hosts["box"].changed == 3

    done = run(check=False)
    assert _what(done) == _what(planned)
    assert done.hosts["box"].changed == planned.hosts["box"].changed
    assert (target / "applied").exists() and (target / "added.txt").read_text() == "added now\n"
    assert run(check=True).changes == []


KEY_COPY = """
- name: "Alpha: local"
  hosts: all
  gather_facts: false
  tasks:
    - name: A key copied without diff false
      ansible.builtin.copy:
        dest: "{{ target }}"
        content: "{{ key }}"
        mode: "0600"
"""


def test_a_diff_that_holds_a_private_key_is_withheld(local_state: State, tmp_path: Path) -> None:
    """The net under the roles' `diff: false`: a key in a diff is never part of a change."""
    key = f"-----BEGIN PRIVATE KEY-----\n{secrets.token_hex(24)}\n-----END PRIVATE KEY-----\n"
    planned = runner.run_playbook(
        local_state,
        EventBus(),
        playbook=_write(tmp_path, KEY_COPY),
        extravars={"target": str(tmp_path / "key.pem"), "key": key},
        strategy_name="linear",
        check=True,
    )
    [change] = planned.changes
    assert [d.text for d in change.diffs] == [runner.WITHHELD]
    assert not (tmp_path / "key.pem").exists()
