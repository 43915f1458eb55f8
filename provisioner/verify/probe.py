"""One probe script for verify's HTTP(S) GETs and served certificates, run where the connection must start.

A NodePort is reached from inside the lab's network namespace; components bound to loopback (and etcd's
certificate) only from their node. One short Python script does all of it: python3 is on every node
(Ansible needs it), curl and openssl may not be. The functions here build its command line for each
place it runs (locally under the lab prefix; as a shell command for SSH or testinfra's ``host.run``)
and read its answer back.

The script's contract, by its first argument:

* ``get URL TIMEOUT`` / ``get-unverified URL TIMEOUT``: GET the URL (``get-unverified`` does not check the
  server's certificate); prints the status, a newline and the body.
* ``cert HOST PORT TIMEOUT``: prints the PEM certificate the TLS endpoint presents (not verified: we
  inspect it).

On any failure (an HTTP error status included) it exits 1 and writes one JSON line to stderr with two
wordings of the failure; :func:`failure` reads it back.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

# No "{{" or "{%" in here: a command testinfra sends through Ansible's shell module would be templated as Jinja.
PROBE_SCRIPT = """\
import json, ssl, sys, traceback, urllib.error, urllib.request
mode, target, timeout = sys.argv[1], sys.argv[2], float(sys.argv[-1])
try:
    if mode == "cert":
        print(ssl.get_server_certificate((target, int(sys.argv[3])), timeout=timeout))
    else:
        context = ssl._create_unverified_context() if mode == "get-unverified" else None
        with urllib.request.urlopen(target, context=context, timeout=timeout) as r:
            print(r.status)
            print(r.read().decode(errors="replace"))
except Exception as exc:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code}: {exc.read().decode(errors='replace').strip()}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    sys.stderr.write(json.dumps({"text": text, "exception": line}) + "\\n")
    sys.exit(1)
"""

# The interpreter on a node (the local side runs the script with verify's own).
NODE_PYTHON = "python3"


def get_args(url: str, timeout: float, verify: bool = True) -> list[str]:
    """The script's arguments for a GET of url, checking the server's certificate or not."""
    return ["get" if verify else "get-unverified", url, str(timeout)]


def cert_args(address: str, port: int, timeout: float) -> list[str]:
    """The script's arguments for fetching the certificate served on address:port."""
    return ["cert", address, str(port), str(timeout)]


def local_argv(prefix: Sequence[str], args: Sequence[str]) -> list[str]:
    """Run the probe on this machine under the lab's command prefix (``ip netns exec NAME``)."""
    return [*prefix, sys.executable, "-c", PROBE_SCRIPT, *args]


def node_command(args: Sequence[str]) -> str:
    """The probe as one shell command on a node: for :meth:`Ssh.run` and for testinfra's ``host.run``."""
    return shlex.join([NODE_PYTHON, "-c", PROBE_SCRIPT, *args])


def read_answer(stdout: str) -> tuple[int, str]:
    """The status and body a successful GET printed."""
    status, _, body = stdout.partition("\n")
    return int(status), body.removesuffix("\n")


@dataclass(frozen=True)
class Failure:
    """What a failed probe reported, in two wordings the callers show as they always have."""

    # verify's own: "HTTP 503: <the body>" for an error status, else "URLError: <urlopen error ...>"
    text: str
    # Python's last traceback line: "urllib.error.HTTPError: HTTP Error 503: Service Unavailable"
    exception: str


def failure(stderr: str) -> Failure:
    """Read a failed probe's stderr; anything else there (python3 missing, the prefix failing) is kept as is."""
    lines = stderr.strip().splitlines()
    try:
        data = json.loads(lines[-1])
        return Failure(str(data["text"]), str(data["exception"]))
    except (IndexError, ValueError, TypeError, KeyError):
        return Failure(stderr.strip(), lines[-1] if lines else "")
