"""The one adapter between provisioner and Ansible: ansible-runner in, provisioner events out.

Each run gets its own private data directory under ``State.runs_dir``; it is kept, so a failed run
can be read afterwards (``artifacts/<id>/stdout`` and ``job_events/``). Plays are named
``"<Phase>: <group>"`` in the playbook; events are grouped into phases by that prefix, which gives
the per-phase durations and changed counts the CLI prints.

Ansible runs inside the provider's command prefix (``ip netns exec <lab> ...``) when there is one,
because the lab machines are reachable only from inside that network namespace.

Every task that changed something becomes a :class:`TaskChange` (host, task, whether a handler ran it, the
loop items or files it changed, the diff of a text file), for real runs and check-mode runs alike: what a
check run (`provisioner plan`) says would change is compared with what the real run then changed.
"""

from __future__ import annotations

import datetime
import difflib
import importlib.util
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import hosts
from provisioner.errors import PlaybookError, ToolMissing
from provisioner.events import EventBus, PhaseFinished, PhaseStarted, Progress, TaskResult
from provisioner.paths import REPO_ROOT
from provisioner.state import State

PLAYBOOK_DIR = REPO_ROOT / "playbooks"
SITE = PLAYBOOK_DIR / "site.yml"
# PROVISIONER_ANSIBLE_STRATEGY=linear forces Ansible's own strategy (e.g. to compare, or if mitogen breaks).
STRATEGY_ENV = "PROVISIONER_ANSIBLE_STRATEGY"
MITOGEN_STRATEGY = "mitogen_linear"
# What a run takes from the operator's environment: where programs and the home directory are (ssh reads
# ~/.ssh), who runs it, the locale (Ansible insists on UTF-8) and the SSH agent. Nothing else: ansible-runner
# keeps the run's whole environment in artifacts/run/command, and a local host's facts in fact_cache, so a
# token exported in the operator's shell would stay on disk. No play reads a PROVISIONER_* variable.
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSH_AUTH_SOCK")
PASSED_ENV_PREFIXES = ("LC_",)


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0


@dataclass
class PhaseStats:
    name: str
    seconds: float = 0.0
    changed: int = 0
    tasks: int = 0


@dataclass(frozen=True)
class FileDiff:
    """What a task changes in one file: a unified diff, or attribute changes (mode, state) as lines."""

    path: str
    text: str
    new: bool = False  # the file is not there yet


@dataclass(frozen=True)
class TaskChange:
    """One task that changed something on one host (or, in check mode, would have)."""

    phase: str
    host: str
    task: str
    handler: bool = False  # run because another task notified it: a service restarted, settings applied
    items: tuple[str, ...] = ()  # the loop items that changed, or the files a module names (fetch_artifacts)
    diffs: tuple[FileDiff, ...] = ()  # none for files copied with `diff: false` (keys, kubeconfigs)


@dataclass
class RunResult:
    run_dir: Path
    strategy: str
    seconds: float
    hosts: dict[str, HostStats]
    phases: list[PhaseStats] = field(default_factory=list)
    changes: list[TaskChange] = field(default_factory=list)
    # host -> path -> sha256 (None: missing), as the installed_sums module first read each file in this run:
    # what the host held before the run replaced anything.
    installed_sums: dict[str, dict[str, str | None]] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    @property
    def stdout(self) -> Path:
        return self.run_dir / "artifacts" / "run" / "stdout"


@dataclass
class _Failure:
    phase: str
    host: str
    task: str
    message: str


def strategy(requested: str | None = None) -> str:
    """mitogen_linear when mitogen is importable (about 10x faster on emulated VMs), else linear."""
    choice = requested or os.environ.get(STRATEGY_ENV, "")
    if choice:
        return choice
    return MITOGEN_STRATEGY if importlib.util.find_spec("ansible_mitogen") else "linear"


def phase_of(play_name: str) -> str:
    """The phase a play belongs to: the text before the first colon, lower case ("Etcd: masters" -> "etcd")."""
    return play_name.split(":", 1)[0].strip().lower() or "ansible"


def _message(res: Mapping[str, Any]) -> str:
    """The most useful one-line-or-few explanation Ansible gave for a failed task."""
    # A loop's own msg says only "One or more items failed": the failed item says what and why.
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            label = item.get("_ansible_item_label", item.get("item"))
            return f"{label}: {_message(item)}" if label is not None else _message(item)
    parts: list[str] = []
    for key in ("msg", "stderr", "module_stderr", "stdout"):
        value = res.get(key)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
        if key == "stderr" and parts:
            break
    return "\n".join(parts) or "no message"


# Text that must never reach a diff shown to a person: a private key, a kubeconfig's embedded one, the Secret
# encryption key. The roles copy such files with `diff: false`; this is the net under that rule.
SECRET_MARKERS = ("PRIVATE KEY-----", "client-key-data", "kind: EncryptionConfiguration")
WITHHELD = "(not shown: it holds a secret)"


def _changed_path(res: Mapping[str, Any]) -> str:
    args = (res.get("invocation") or {}).get("module_args") or {}
    return str(res.get("dest") or res.get("path") or args.get("dest") or args.get("path") or "")


def _file_diffs(res: Mapping[str, Any]) -> tuple[FileDiff, ...]:
    """Ansible's `diff` of a result (a mapping or a list of them) as text, one per file."""
    raw = res.get("diff")
    entries = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    diffs = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        path = str(entry.get("before_header") or _changed_path(res) or entry.get("after_header") or "")
        before, after = entry.get("before", ""), entry.get("after", "")
        if isinstance(before, dict) or isinstance(after, dict):
            # Attributes (file, user): the keys that differ, as "key: old -> new".
            old, new = dict(before or {}), dict(after or {})
            lines = [
                f"{k}: {old.get(k)} -> {new.get(k)}"
                for k in sorted({*old, *new} - {"path"})
                if old.get(k) != new.get(k)
            ]
            diffs.append(FileDiff(path, "\n".join(lines)))
        elif isinstance(before, str) and isinstance(after, str):
            new_file = "before_header" not in entry and before == ""
            if any(marker in text for marker in SECRET_MARKERS for text in (before, after)):
                diffs.append(FileDiff(path, WITHHELD, new_file))
                continue
            text = "".join(
                difflib.unified_diff(
                    before.splitlines(keepends=True),
                    after.splitlines(keepends=True),
                    "/dev/null" if new_file else f"{path} (before)",
                    f"{path} (after)",
                )
            )
            diffs.append(FileDiff(path, text, new_file))
        elif isinstance(entry.get("prepared"), str):
            prepared = entry["prepared"]
            diffs.append(FileDiff(path, WITHHELD if any(m in prepared for m in SECRET_MARKERS) else prepared))
    return tuple(d for d in diffs if d.text)


def _change(phase: str, host: str, task: str, handler: bool, res: Mapping[str, Any]) -> TaskChange:
    results = res.get("results")
    if isinstance(results, list):
        changed = [r for r in results if isinstance(r, dict) and r.get("changed")]
        items = tuple(str(r.get("_ansible_item_label", r.get("item"))) for r in changed)
        diffs = tuple(d for r in changed for d in _file_diffs(r))
    else:
        # A module that changes several files in one call names them (fetch_artifacts: `fetched`).
        fetched = res.get("fetched")
        items = tuple(str(f) for f in fetched) if isinstance(fetched, list) else ()
        diffs = _file_diffs(res)
    return TaskChange(phase, host, task, handler, items, diffs)


def status_word(status: str, check: bool) -> str:
    """A task status as a person reads it: in check mode (`provisioner plan`) nothing changed, it would."""
    return "would change" if check and status == "changed" else status


class _Translator:
    """Turns ansible-runner events into provisioner events and keeps per-phase counts and every change."""

    def __init__(self, bus: EventBus, check: bool = False) -> None:
        self.bus = bus
        self.check = check
        self.phases: list[PhaseStats] = []
        self._phase: PhaseStats | None = None
        self._started = 0.0
        self._task = ""
        self._handler_tasks: set[str] = set()  # uuids of the tasks started as handlers
        self.failures: list[_Failure] = []
        self.changes: list[TaskChange] = []
        self.installed_sums: dict[str, dict[str, str | None]] = {}
        self.lock = threading.Lock()

    @property
    def phase(self) -> str:
        return self._phase.name if self._phase else "ansible"

    def _enter(self, name: str) -> None:
        if self._phase and self._phase.name == name:
            return
        self.close()
        self._phase = PhaseStats(name)
        self._started = time.monotonic()
        self.bus.emit(PhaseStarted(name, "ansible"))

    def close(self, ok: bool = True) -> None:
        if self._phase is None:
            return
        self._phase.seconds = time.monotonic() - self._started
        self.phases.append(self._phase)
        verb = status_word("changed", self.check)
        self.bus.emit(
            PhaseFinished(self._phase.name, self._phase.seconds, ok=ok, detail=f"{self._phase.changed} {verb}")
        )
        self._phase = None

    def __call__(self, event: dict[str, Any]) -> bool:
        with self.lock:
            self._handle(event)
        return True  # keep every event in the run's artifacts directory

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data: dict[str, Any] = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self._enter(phase_of(str(data.get("play", ""))))
        elif kind == "playbook_on_task_start":
            self._task = str(data.get("task", ""))
            # ansible-runner reports a handler's start as a task start with is_conditional set (v1's way).
            if data.get("is_conditional"):
                self._handler_tasks.add(str(data.get("task_uuid", "")))
            if self._phase:
                self._phase.tasks += 1
            self.bus.emit(Progress(self.phase, self._task))
        elif kind.startswith("runner_on_") and kind != "runner_on_start":
            self._result(kind.removeprefix("runner_on_"), data)

    def _result(self, outcome: str, data: dict[str, Any]) -> None:
        host = str(data.get("host", ""))
        task = str(data.get("task", self._task))
        res: dict[str, Any] = data.get("res") or {}
        if outcome == "ok":
            status = "changed" if res.get("changed") else "ok"
            if status == "changed":
                if self._phase:
                    self._phase.changed += 1
                handler = str(data.get("task_uuid", "")) in self._handler_tasks
                self.changes.append(_change(self.phase, host, task, handler, res))
            if str(data.get("task_action", "")).endswith("installed_sums") and isinstance(res.get("sums"), dict):
                held = self.installed_sums.setdefault(host, {})
                for path, sha in res["sums"].items():
                    held.setdefault(str(path), sha)
            self.bus.emit(TaskResult(self.phase, task, host, status))
        elif outcome in ("failed", "unreachable"):
            message = _message(res)
            if outcome == "failed" and data.get("ignore_errors"):
                self.bus.emit(TaskResult(self.phase, task, host, "ok", message))
                return
            self.failures.append(_Failure(self.phase, host, task, message))
            self.bus.emit(TaskResult(self.phase, task, host, outcome, message))
        elif outcome == "skipped":
            self.bus.emit(TaskResult(self.phase, task, host, "skipped"))


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if not found:
        raise ToolMissing(
            "ansible-playbook", "not found next to this Python or on PATH", "install ansible-core (scripts/deps.sh)"
        )
    return found


def _env(state: State, chosen: str, host_key_checking: bool) -> dict[str, str]:
    env = {
        "ANSIBLE_CONFIG": str(PLAYBOOK_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOK_DIR / "roles"),
        "ANSIBLE_STRATEGY": chosen,
        # ansible-core 2.19 warns about third-party strategies on every run; mitogen is a choice here.
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_FORCE_COLOR": "False",
        "ANSIBLE_NOCOLOR": "True",
    }
    if chosen.startswith("mitogen"):
        spec = importlib.util.find_spec("ansible_mitogen")
        if spec is None or not spec.submodule_search_locations:
            raise ToolMissing(
                "mitogen", f"strategy {chosen} was asked for but mitogen is not installed", "pip install mitogen"
            )
        plugins = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(plugins)
    # The same options as every other SSH connection to the nodes: 60 s for the TCP connect (Ansible's own bound
    # on the whole connection set-up is ansible.cfg's timeout).
    options = hosts.ssh_options(state.known_hosts, strict=host_key_checking, connect_timeout=60)
    env["ANSIBLE_HOST_KEY_CHECKING"] = str(host_key_checking)
    env["ANSIBLE_SSH_ARGS"] = shlex.join(options)
    return env


def _passed_env() -> dict[str, str]:
    """The operator's variables a run needs (PASSED_ENV); ANSIBLE_* of the operator's shell are not among them."""
    passed = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith(PASSED_ENV_PREFIXES)}
    # ansible-runner appends its own callback to these two rather than replacing them; empty, it adds only its own.
    return {**passed, "ANSIBLE_CALLBACK_PLUGINS": "", "ANSIBLE_STDOUT_CALLBACK": ""}


def _trimmed(prepared: Mapping[str, str], envvars: Mapping[str, str]) -> dict[str, str]:
    """ansible-runner's prepared environment without what it copied unchanged from os.environ.

    Kept: our variables, and those ansible-runner set itself (its callback plugin, artifact and fact-cache
    directories)."""
    return {k: v for k, v in prepared.items() if k in envvars or os.environ.get(k) != v}


def run_playbook(
    state: State,
    bus: EventBus,
    *,
    playbook: Path = SITE,
    inventory: Path | None = None,
    prefix: Sequence[str] = (),
    extravars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    tags: str | None = None,
    strategy_name: str | None = None,
    host_key_checking: bool = False,
    check: bool = False,
    name: str = "up",
    rerun: str = "provisioner up",
) -> RunResult:
    """Run a playbook against the cluster's inventory (or `inventory`); raise PlaybookError naming host and
    task on failure.

    `check`: Ansible's check mode with diffs: every task reports what it would change and changes nothing
    (`provisioner plan`). `rerun` is the command a failure tells the user to run again once the cause is fixed."""
    import ansible_runner  # heavy import, only when a run happens

    chosen = strategy(strategy_name)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    run_dir = state.runs_dir / f"{stamp}-{name}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = state.runs_dir / f"{stamp}-{name}-{suffix}"
    run_dir.mkdir(parents=True)

    kwargs: dict[str, Any] = {}
    args = [str(playbook)]
    if prefix:
        # The whole ansible-playbook process enters the lab's namespace, so SSH (and mitogen) reach the nodes.
        wrapper = run_dir / "ansible-playbook"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# Runs Ansible inside the lab's network namespace (written by provisioner.runner).\n"
            f'exec {shlex.join([*prefix, _ansible_playbook()])} "$@"\n'
        )
        wrapper.chmod(0o755)
        kwargs["binary"] = str(wrapper)
    else:
        kwargs["binary"] = _ansible_playbook()
    if limit:
        args += ["--limit", limit]
    if tags:
        args += ["--tags", tags]
    if check:
        args += ["--check", "--diff"]

    translator = _Translator(bus, check)
    envvars = {**_passed_env(), **_env(state, chosen, host_key_checking)}
    started = time.monotonic()
    # run_async's two steps (prepare, then run in a thread) with the environment trimmed in between:
    # ansible-runner starts every run from a copy of os.environ and writes it to artifacts/run/command.
    with _cancelled_by_signals() as cancelled:
        runner = ansible_runner.interface.init_runner(
            private_data_dir=str(run_dir),
            ident="run",
            inventory=str(inventory or state.inventory_file),
            cmdline=shlex.join(args),
            extravars=dict(extravars or {}),
            envvars=envvars,
            event_handler=translator,
            cancel_callback=cancelled.is_set,
            quiet=True,
            suppress_env_files=False,
            **kwargs,
        )
        runner.config.env = _trimmed(runner.config.env, envvars)
        thread = threading.Thread(target=runner.run)
        thread.start()
        thread.join()
    seconds = time.monotonic() - started
    hosts = _host_stats(runner.stats or {})
    failed = runner.status != "successful" or any(h.failed or h.unreachable for h in hosts.values())
    with translator.lock:
        translator.close(ok=not failed)
    result = RunResult(
        run_dir, chosen, seconds, hosts, translator.phases, translator.changes, translator.installed_sums
    )
    if failed:
        raise _error(result, translator.failures, str(runner.status), runner.rc, rerun, resumes=not check)
    return result


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while Ansible ran: handled like Ctrl-C (the run is cancelled, the CLI says how to
    resume), with the exit status a terminated process has."""

    exit_code = 128 + signal.SIGTERM


@dataclass
class _Cancel:
    received: list[int] = field(default_factory=list)

    def is_set(self) -> bool:
        return bool(self.received)


@contextmanager
def _cancelled_by_signals() -> Iterator[_Cancel]:
    """Ctrl-C or SIGTERM during a run cancels it (ansible-runner stops ansible-playbook), then reaches the
    caller as KeyboardInterrupt / Terminated once the run has stopped.

    ansible-runner's own handler, installed when no cancel callback is given, stays installed after the
    run and swallows every later SIGINT and SIGTERM: a `secrets rotate-key` or `up` went on to its next
    step after a kill. Ours is installed for the run only and the previous handlers come back after it.
    """
    cancel = _Cancel()
    if threading.current_thread() is not threading.main_thread():
        yield cancel  # only the main thread may set handlers; the caller's own handling stays
        return
    previous = {sig: signal.signal(sig, lambda number, frame: cancel.received.append(number)) for sig in _SIGNALS}
    try:
        yield cancel
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if cancel.received:
        raise Terminated() if cancel.received[0] == signal.SIGTERM else KeyboardInterrupt()


def _host_stats(stats: Mapping[str, Mapping[str, int]]) -> dict[str, HostStats]:
    hosts: dict[str, HostStats] = {}
    keys = {
        "ok": "ok",
        "changed": "changed",
        "failures": "failed",
        "dark": "unreachable",
        "skipped": "skipped",
        "rescued": "rescued",
    }
    for runner_key, attr in keys.items():
        for host, count in (stats.get(runner_key) or {}).items():
            setattr(hosts.setdefault(host, HostStats()), attr, count)
    return hosts


def _error(
    result: RunResult,
    failures: list[_Failure],
    status: str,
    rc: int | None,
    rerun: str = "provisioner up",
    resumes: bool = True,
) -> PlaybookError:
    log = result.stdout
    fix = f"the run's full log is {log}; fix the cause and run `{rerun}` again"
    if resumes:
        fix += " (it picks up where it stopped)"
    # A failure inside a block that was rescued is not final; the rescue's own failure comes last.
    final = [
        f
        for f in failures
        if result.hosts.get(f.host, HostStats()).failed or result.hosts.get(f.host, HostStats()).unreachable
    ]
    if final:
        last = final[-1]
        return PlaybookError(f"phase {last.phase}: task '{last.task}' on {last.host}", last.message, fix)
    if failures:
        last = failures[-1]
        return PlaybookError(f"phase {last.phase}: task '{last.task}' on {last.host}", last.message, fix)
    return PlaybookError("ansible-playbook", f"ended with status {status} (exit code {rc})", fix)
