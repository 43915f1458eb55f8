"""How verify talks to the lab: HTTP probes and bounded waits (SSH is provisioner.hosts', kubectl provisioner.kube's).

Every call is a subprocess started under the lab's command prefix (``ip netns exec NAME``), so no
packet for the lab ever leaves from the host's own network namespace.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

# Re-exported: the checks, the bench and the tests reach nodes through verify.kube's names.
from provisioner.hosts import NodeCommandError as NodeCommandError
from provisioner.hosts import Ssh as Ssh
from provisioner.kube import KubectlError
from provisioner.verify import probe

T = TypeVar("T")


class CheckFailed(Exception):
    """A promise is broken. The message says what was expected and what was seen."""


class NotYet(Exception):
    """Raised by a probe passed to :func:`wait_for`: the condition does not hold yet (message: what was seen)."""


def wait_for(what: str, probe: Callable[[], T], timeout: float, interval: float = 2.0) -> T:
    """Call ``probe`` until it returns; give up after ``timeout`` seconds naming what was awaited.

    A probe says "not yet" by raising :class:`NotYet`; a failing kubectl or SSH call counts as not yet
    too, because the API or a node being briefly away is exactly what self-healing checks go through.
    """
    deadline = time.monotonic() + timeout
    last = "nothing observed yet"
    while True:
        try:
            return probe()
        except NotYet as exc:
            last = str(exc) or last
        except (KubectlError, NodeCommandError) as exc:
            last = exc.message()
        if time.monotonic() >= deadline:
            raise CheckFailed(f"waited {timeout:.0f}s for {what}; last seen: {last}")
        time.sleep(interval)


def http_get(prefix: Sequence[str], url: str, timeout: float = 10) -> str:
    """GET a URL from inside the lab's namespace (verify's probe script runs under the prefix); the body."""
    proc = subprocess.run(
        probe.local_argv(prefix, probe.get_args(url, timeout)),
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    if proc.returncode != 0:
        raise NotYet(f"GET {url}: {probe.failure(proc.stderr).text or proc.returncode}")
    return probe.read_answer(proc.stdout)[1]
