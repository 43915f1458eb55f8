"""Typed errors a user can cause. The CLI turns each into one clear message and a non-zero exit.

Every error names the thing, the cause and the next step, so a reader never needs a traceback.
"""

from __future__ import annotations


class ProvisionerError(Exception):
    """Base for errors caused by input or environment, not by a bug."""

    exit_code = 1

    def __init__(self, what: str, cause: str, fix: str = "") -> None:
        self.what = what
        self.cause = cause
        self.fix = fix
        super().__init__(self.message())

    def message(self) -> str:
        text = f"{self.what}: {self.cause}"
        return f"{text}; {self.fix}" if self.fix else text


class SpecError(ProvisionerError):
    """The cluster spec is not valid. Carries one problem per line."""

    exit_code = 2

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(path, f"{len(problems)} problem(s) in the cluster spec")

    def message(self) -> str:
        return "\n".join(self.problems)


class ToolMissing(ProvisionerError):
    """A host tool (vagrant, libvirtd, go, ...) is not installed."""


class ArtifactError(ProvisionerError):
    """An artifact could not be built, fetched or verified."""


class MachineError(ProvisionerError):
    """A machine could not be created, reached or destroyed."""


class PlaybookError(ProvisionerError):
    """An Ansible phase failed on a host."""


class VerifyError(ProvisionerError):
    """One or more verification checks failed."""
