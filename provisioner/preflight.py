"""Preflight before Ansible runs: every host answers SSH, root or passwordless sudo works, Python 3 is there.

Checks run in parallel with paramiko. When the lab lives in a network namespace, the checks run in a child
Python started behind the lab's command prefix (`ip netns exec NAME`), so no packet leaves the namespace;
hosts and results cross the boundary as JSON on stdin/stdout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import paramiko

from provisioner.errors import MachineError
from provisioner.hosts import HostConnection

CONNECT_TIMEOUT = 15.0
# Under software emulation a remote command (sshd fork, sudo, Python start) takes seconds, not milliseconds.
COMMAND_TIMEOUT = 90.0

# One remote command for all three checks: each SSH exec costs seconds on an emulated VM.
PROBE = (
    "id -u; "
    "if sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi; "
    "if command -v python3 >/dev/null; then python3 -c 'import sys; print(\"python=%d.%d\" % sys.version_info[:2])'; "
    "else echo python=none; fi"
)


@dataclass(frozen=True)
class Result:
    name: str
    address: str  # where it was reached: ssh_host:ssh_port
    ok: bool
    reason: str = ""
    python: str = ""


def check(hosts: list[HostConnection], prefix: list[str]) -> None:
    """Raise MachineError naming every host that fails, with its address and the reason."""
    failed = [r for r in probe(hosts, prefix) if not r.ok]
    if failed:
        lines = [f"{r.name} ({r.address}): {r.reason}" for r in failed]
        raise MachineError(
            "preflight",
            f"{len(failed)} of {len(hosts)} host(s) not ready:\n" + "\n".join(lines),
            "check that each host is up, its SSH key and user are right, and python3 is installed",
        )


def probe(hosts: list[HostConnection], prefix: list[str]) -> list[Result]:
    """Check every host, in parallel; behind `prefix` (a namespace) when one is given."""
    if not hosts:
        return []
    if prefix:
        return _probe_behind(hosts, prefix)
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        return list(pool.map(probe_one, hosts))


def probe_one(host: HostConnection) -> Result:
    where = f"{host.ssh_host}:{host.ssh_port}"

    def fail(reason: str) -> Result:
        return Result(host.name, where, False, reason)

    try:
        sock = socket.create_connection((host.ssh_host, host.ssh_port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        return fail(f"SSH port unreachable: {exc.strerror or exc}")
    client = paramiko.SSHClient()
    # Lab VMs get new host keys whenever they are recreated, so there is nothing to pin: trust on first use.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            host.ssh_host,
            port=host.ssh_port,
            username=host.ssh_user,
            key_filename=str(host.ssh_key),
            sock=sock,
            timeout=CONNECT_TIMEOUT,
            banner_timeout=CONNECT_TIMEOUT * 2,
            auth_timeout=CONNECT_TIMEOUT * 2,
            look_for_keys=False,
            allow_agent=False,
        )
        _, stdout, stderr = client.exec_command(PROBE, timeout=COMMAND_TIMEOUT)
        output = stdout.read().decode(errors="replace")
        status = stdout.channel.recv_exit_status()
        if status != 0:
            return fail(f"probe command failed (exit {status}): {stderr.read().decode(errors='replace').strip()}")
    except paramiko.AuthenticationException:
        return fail(f"SSH login as {host.ssh_user!r} with key {host.ssh_key} was refused")
    except (paramiko.SSHException, OSError, TimeoutError) as exc:
        return fail(f"SSH failed: {exc}")
    finally:
        client.close()
    return _judge(host, where, output)


def _judge(host: HostConnection, where: str, output: str) -> Result:
    lines = output.split()
    uid = lines[0] if lines else ""
    values = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    python = values.get("python", "none")
    if uid != "0" and values.get("sudo") != "yes":
        reason = f"user {host.ssh_user!r} is not root and `sudo -n` needs a password or is not allowed"
        return Result(host.name, where, False, reason, python)
    if python == "none":
        return Result(host.name, where, False, "python3 is not installed (Ansible needs it)", python)
    return Result(host.name, where, True, "", python)


def _probe_behind(hosts: list[HostConnection], prefix: list[str]) -> list[Result]:
    payload = json.dumps([{**asdict(h), "ssh_key": str(h.ssh_key)} for h in hosts])
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "provisioner.preflight"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=CONNECT_TIMEOUT * 3 + COMMAND_TIMEOUT + 30,
        check=False,
    )
    if proc.returncode != 0:
        raise MachineError(
            "preflight", f"the check could not run behind {' '.join(prefix)}: {proc.stderr.strip()[-800:]}"
        )
    return [Result(**r) for r in json.loads(proc.stdout)]


def _main() -> None:
    hosts = [HostConnection(**{**h, "ssh_key": Path(h["ssh_key"])}) for h in json.load(sys.stdin)]
    json.dump([asdict(r) for r in probe(hosts, [])], sys.stdout)


if __name__ == "__main__":
    _main()
