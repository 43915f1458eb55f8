"""Typed progress events. The core emits them; the CLI (or a test recorder) subscribes.

The core never prints: anything a user should see travels through an :class:`EventBus`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    at: float = field(default_factory=time.monotonic, kw_only=True)


@dataclass(frozen=True)
class PhaseStarted(Event):
    phase: str
    detail: str = ""


@dataclass(frozen=True)
class PhaseFinished(Event):
    phase: str
    seconds: float
    ok: bool = True
    detail: str = ""


@dataclass(frozen=True)
class TaskResult(Event):
    """One task on one host: status is ok, changed, failed, skipped or unreachable."""

    phase: str
    task: str
    host: str
    status: str
    message: str = ""


@dataclass(frozen=True)
class Progress(Event):
    """Free-form progress inside a phase (a component being built, a VM booting)."""

    phase: str
    message: str
    host: str = ""


@dataclass(frozen=True)
class Warning(Event):
    message: str


Handler = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def emit(self, event: Event) -> None:
        for handler in self._handlers:
            handler(event)


class Recorder:
    """Collects events; used by tests and by the run summary."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


class Phase:
    """Context manager that emits PhaseStarted/PhaseFinished with the elapsed time."""

    def __init__(self, bus: EventBus, name: str, detail: str = "") -> None:
        self.bus = bus
        self.name = name
        self.detail = detail
        self.started = 0.0

    def __enter__(self) -> Phase:
        self.started = time.monotonic()
        self.bus.emit(PhaseStarted(self.name, self.detail))
        return self

    def progress(self, message: str, host: str = "") -> None:
        self.bus.emit(Progress(self.name, message, host))

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.bus.emit(PhaseFinished(self.name, time.monotonic() - self.started, ok=exc_type is None))
