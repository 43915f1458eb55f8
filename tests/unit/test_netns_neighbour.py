"""forget_neighbour with the real kernel: a machine made again at the same address, with a new MAC.

Three namespaces of our own on a bridge with a pinned MAC (as libvirt pins its bridges'), plus a
bystander port keeping the bridge up: the lab side talks to the old machine, the old machine goes and a
new one takes its address. Without forgetting the neighbour the lab side keeps sending to the old MAC;
after forget_neighbour it connects at once. No packet leaves these namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from provisioner.providers import netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 to make namespaces"
)
ADDRESS = "10.99.0.12"
PORT = 8000


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def lab() -> Iterator[tuple[str, str]]:
    """The lab side's namespace and a name stem for the machines' namespaces; all removed afterwards."""
    stem = f"nt{uuid.uuid4().hex[:6]}"
    side = f"{stem}-lab"
    made = [side]
    ip("netns", "add", side)
    ip("-n", side, "link", "add", "br0", "address", "02:00:00:00:00:01", "type", "bridge")
    ip("-n", side, "addr", "add", "10.99.0.1/24", "dev", "br0")
    ip("-n", side, "link", "set", "br0", "up")
    try:
        made.append(_machine(side, f"{stem}-by", "10.99.0.11"))  # the bystander: the bridge keeps a port
        yield side, stem
    finally:
        for name in [*made, f"{stem}-old", f"{stem}-new"]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _machine(side: str, name: str, address: str) -> str:
    ip("netns", "add", name)
    ip("link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b")
    ip("link", "set", f"{name}a", "netns", side)
    ip("link", "set", f"{name}b", "netns", name)
    ip("-n", side, "link", "set", f"{name}a", "master", "br0", "up")
    ip("-n", name, "addr", "add", f"{address}/24", "dev", f"{name}b")
    ip("-n", name, "link", "set", f"{name}b", "up")
    return name


def _listen(name: str) -> subprocess.Popen[bytes]:
    script = f"import socket;s=socket.create_server(({ADDRESS!r},{PORT}));print(1,flush=True);s.accept()"
    proc = subprocess.Popen(["ip", "netns", "exec", name, "python3", "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()  # listening
    return proc


def _connects(side: str, timeout: float) -> bool:
    probe = f"import socket;socket.create_connection(({ADDRESS!r},{PORT}),timeout={timeout}).close()"
    return subprocess.run(["ip", "netns", "exec", side, "python3", "-c", probe], capture_output=True).returncode == 0


@pytest.mark.parametrize("forget", [False, True])
def test_a_machine_made_again_at_the_same_address_is_reached_at_once(lab: tuple[str, str], forget: bool) -> None:
    side, stem = lab
    old = _machine(side, f"{stem}-old", ADDRESS)
    with _listen(old):
        assert _connects(side, timeout=5)
    ip("netns", "del", old)  # the machine goes (its port leaves the bridge)
    if forget:
        netns.forget_neighbour(["ip", "netns", "exec", side], ADDRESS)
    new = _machine(side, f"{stem}-new", ADDRESS)
    with _listen(new) as server:
        reached = _connects(side, timeout=3)
        server.kill()
    assert reached == forget  # without forgetting, the SYNs still go to the old MAC
