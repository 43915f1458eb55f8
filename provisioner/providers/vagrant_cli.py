"""Vagrant's command line: the few commands the lab runs, each behind a command prefix (the lab's namespace).

Output meant for programs (`--machine-readable`) is parsed here; the rest goes to a log.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# python-vagrant's names for these libvirt states, which `status` showed while it parsed Vagrant's output.
LIBVIRT_STATE_NAMES = {"shutoff": "poweroff", "paused": "saved"}


def parse_machine_readable(text: str) -> list[tuple[str, str, str]]:
    """`--machine-readable` output (`timestamp,target,type,data` lines) to (target, type, data) rows."""
    rows = []
    for line in text.splitlines():
        parts = line.split(",", 3)
        if len(parts) == 4:
            rows.append((parts[1], parts[2], parts[3].replace("%!(VAGRANT_COMMA)", ",")))
    return rows


def parse_status(text: str) -> dict[str, str]:
    """`vagrant status --machine-readable` to {machine: state}, e.g. {"master": "running", "w": "not_created"}."""
    states: dict[str, str] = {}
    providers: dict[str, str] = {}
    for target, kind, data in parse_machine_readable(text):
        if kind == "state":
            states[target] = data
        elif kind == "provider-name":
            providers[target] = data
    return {
        name: LIBVIRT_STATE_NAMES.get(state, state) if providers.get(name) == "libvirt" else state
        for name, state in states.items()
    }


def parse_box_names(text: str) -> set[str]:
    """The box names in `vagrant box list --machine-readable` output."""
    return {data for _, kind, data in parse_machine_readable(text) if kind == "box-name"}


# Ours, not python-vagrant: it has no public way to prefix its commands or to `up` several machines in one run.
@dataclass(frozen=True)
class VagrantCLI:
    """The vagrant commands the lab runs, each as `[*prefix, "vagrant", ...]` in `root` with `env`.

    Vagrant's own output goes to `log`, read back for error messages (the core never prints); of the commands
    whose output is parsed or streamed, only stderr goes there.
    """

    prefix: Sequence[str]
    root: Path
    env: Mapping[str, str]
    log: Path

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, "vagrant", *args]

    def status(self) -> dict[str, str]:
        """Each machine's state in Vagrant's machine-readable words (`running`, `not_created`, ...)."""
        return parse_status(self._output("status", "--machine-readable"))

    def ssh_config(self, name: str | None = None) -> str:
        return self._output("ssh-config", *([] if name is None else [name]))

    def box_names(self) -> set[str]:
        return parse_box_names(self._output("box", "list", "--machine-readable"))

    def box_add(self, name: str, path: Path, provider: str) -> None:
        self._call("box", "add", name, str(path), "--force", "--provider", provider)

    def up(self, names: Sequence[str], provider: str) -> Iterator[str]:
        """One `vagrant up` for several machines (vagrant-libvirt starts them in parallel), line by line."""
        return self._stream("up", "--provider", provider, "--no-provision", *names)

    def destroy(self, name: str | None = None) -> None:
        self._call("destroy", *([] if name is None else [name]), "--force")

    def _call(self, *args: str) -> None:
        with self.log.open("a") as log:
            subprocess.run(self.argv(*args), cwd=self.root, env=self.env, stdout=log, stderr=log, check=True)

    def _output(self, *args: str) -> str:
        # Vagrant (Ruby) writes UTF-8 whatever the locale; a stray byte must not end a run.
        with self.log.open("a") as log:
            return subprocess.run(
                self.argv(*args),
                cwd=self.root,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                encoding="utf-8",
                errors="replace",
                check=True,
            ).stdout

    def _stream(self, *args: str) -> Iterator[str]:
        argv = self.argv(*args)
        with (
            self.log.open("a") as log,
            subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=log) as proc,
        ):
            assert proc.stdout is not None
            # Lines end at newlines only (bytes, not text mode): progress bars redraw with bare carriage returns.
            for raw in iter(proc.stdout.readline, b""):
                yield raw.decode("utf-8", errors="replace").rstrip()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv)
