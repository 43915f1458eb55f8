"""Draws core events for a person, and turns typed errors into one clear message.

This is the only place (with the CLI verbs) that prints. The core emits events on an EventBus.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provisioner import paths
from provisioner.errors import ProvisionerError
from provisioner.events import (
    Event,
    EventBus,
    PhaseFinished,
    PhaseStarted,
    Progress,
    TaskResult,
    Warning,
)
from provisioner.runner import status_word

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


# The options most verbs share.
SpecOption = Annotated[
    Path | None,
    typer.Option("--spec", "-s", help="Cluster spec file.", show_default="inventories/lab/cluster.yaml"),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
# What `up` and `plan` take besides the spec.
SourceOption = Annotated[str | None, typer.Option("--source", help="Artifact source: auto, release, mirror or build.")]
StrategyOption = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        help="Ansible strategy; mitogen_linear when mitogen is installed, else linear. "
        "Also $PROVISIONER_ANSIBLE_STRATEGY.",
    ),
]


class TimedStep(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def seconds(self) -> float: ...


def steps_table(title: str, steps: Sequence[TimedStep]) -> Table:
    """A day-2 command's steps with their durations (the summary that ends a restore or a key rotation)."""
    table = Table(title=title, title_justify="left")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step in steps:
        table.add_row(step.name, f"{step.seconds:.1f}")
    return table


def spec_path(option: Path | None) -> Path:
    """The spec a verb works on: --spec, else the default lab's, which is named aloud when the user is not
    in this repository (where `inventories/lab/cluster.yaml` would be the obvious guess)."""
    if option is not None:
        return option
    cwd = Path.cwd().resolve()
    if cwd != paths.REPO_ROOT and paths.REPO_ROOT not in cwd.parents:
        console.print(f"spec: {paths.default_spec()} (the default lab; pass --spec FILE for another)")
    return paths.default_spec()


STATUS_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "unreachable": "bold red",
    "skipped": "dim",
}


class Renderer:
    """Prints one line per phase start/end, per changed or failed task, and per progress message.

    Tasks that end `ok` are counted, not printed: a converged cluster's re-run stays quiet. `check`: the run
    is Ansible's check mode (`provisioner plan`), whose changed tasks are what would change.
    """

    def __init__(self, check: bool = False) -> None:
        self.check = check
        self.started = time.monotonic()
        self.phases: list[tuple[str, float, bool]] = []
        self.counts: dict[str, int] = {}

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def __call__(self, event: Event) -> None:
        stamp = f"[dim]{self.elapsed()}[/dim]"
        if isinstance(event, PhaseStarted):
            detail = f" [dim]{event.detail}[/dim]" if event.detail else ""
            console.print(f"{stamp} [bold cyan]▶ {event.phase}[/bold cyan]{detail}")
        elif isinstance(event, PhaseFinished):
            self.phases.append((event.phase, event.seconds, event.ok))
            mark = "[green]✓[/green]" if event.ok else "[red]✗[/red]"
            console.print(f"{stamp} {mark} {event.phase} [dim]{event.seconds:.1f}s[/dim]")
        elif isinstance(event, TaskResult):
            self.counts[event.status] = self.counts.get(event.status, 0) + 1
            if event.status in ("changed", "failed", "unreachable"):
                style = STATUS_STYLE[event.status]
                msg = f" [dim]{event.message}[/dim]" if event.message else ""
                console.print(
                    f"{stamp}   [{style}]{self._word(event.status):<9}[/{style}] {event.host}: {event.task}{msg}"
                )
        elif isinstance(event, Progress):
            host = f"{event.host}: " if event.host else ""
            console.print(f"{stamp}   {event.phase}: {host}{event.message}")
        elif isinstance(event, Warning):
            console.print(f"{stamp} [yellow]warning:[/yellow] {event.message}")

    def summary(self, title: str = "summary") -> None:
        if not self.phases:
            return
        table = Table(title=title, title_justify="left")
        table.add_column("phase")
        table.add_column("seconds", justify="right")
        table.add_column("result")
        for phase, seconds, ok in self.phases:
            table.add_row(phase, f"{seconds:.1f}", "[green]ok[/green]" if ok else "[red]failed[/red]")
        table.add_row("[bold]total[/bold]", f"{time.monotonic() - self.started:.1f}", "")
        console.print(table)
        if self.counts:
            counts = sorted(self.counts.items())
            console.print("tasks: " + ", ".join(f"{self._word(status)}={count}" for status, count in counts))

    def _word(self, status: str) -> str:
        return status_word(status, self.check)


def cli_bus(check: bool = False) -> tuple[EventBus, Renderer]:
    bus = EventBus()
    renderer = Renderer(check)
    bus.subscribe(renderer)
    return bus, renderer


@contextlib.contextmanager
def fail_cleanly(renderer: Renderer | None = None, exit_code: int | None = None) -> Iterator[None]:
    """A user's mistake ends in one message and a non-zero exit (`exit_code` for every error, when given: a
    verb whose own exit codes mean something else); a bug still shows its traceback."""
    try:
        yield
    except ProvisionerError as exc:
        if renderer is not None:
            renderer.summary()
        # The message quotes the user's input, which must not be read as rich markup ("[/]" would crash).
        console.print(f"[bold red]error:[/bold red] {escape(exc.message())}", soft_wrap=True)
        raise typer.Exit(exit_code or exc.exit_code) from None
    except KeyboardInterrupt as exc:
        if renderer is not None:
            renderer.summary("interrupted")
        console.print("interrupted; re-run the same command to continue from where it stopped")
        sys.exit(getattr(exc, "exit_code", 130))
