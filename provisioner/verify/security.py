"""Security checks: what the cluster refuses, tried on the live cluster the way an attacker would try it.

`etcd-refuses-workers`: root on a worker holds the kubelet's client certificate, signed by the cluster CA.
etcd trusts only its own CA, so that certificate opens neither etcd's client port nor its peer port. A lone
member listens on the master's loopback only, so a worker cannot even connect to it; members of several
serve the other masters on the node network, where TLS alone refuses a worker. The check presents the
worker's own certificate (read from the worker) on the master, where its member listens, next to etcd's
own certificates as the control that the probe itself works.

`secrets-current-key`: every Secret in etcd is stored under the first key of the encryption config the
master's apiserver reads, so no Secret still depends on a key a rotation (or a person) meant to retire.
"""

from __future__ import annotations

import base64
import json
import pwd
import re
import secrets
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from provisioner import encryption, endpoints, layout
from provisioner.providers import netns
from provisioner.providers.vagrant import VagrantLab
from provisioner.verify import probe
from provisioner.verify.kube import CheckFailed, NotYet, wait_for
from provisioner.verify.lab import ClusterCheck, Lab, Skip, agnhost_deployment, scratch_namespace

# Runs on the master with the worker's certificate and key on stdin (never on a command line, which a
# failure would print): a TLS handshake and GET /version on each port, once per identity.
_TRY_IDENTITIES = r"""
import json, os, socket, ssl, sys, tempfile
job = json.load(sys.stdin)
results = {}
with tempfile.TemporaryDirectory() as tmp:
    def attempt(port, cert, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(cert, key)
        try:
            with socket.create_connection((job["address"], port), timeout=20) as raw:
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
                    data = tls.recv(4096)
        except (ssl.SSLError, OSError) as exc:
            return "refused: " + (getattr(exc, "reason", None) or str(exc))
        line = data.split(b"\r\n")[0].decode(errors="replace")
        return ("accepted: " + line) if line.startswith("HTTP/") else "refused: connection closed"
    for name, pem in job["worker"].items():
        path = os.path.join(tmp, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, pem.encode())
        os.close(fd)
    worker = (os.path.join(tmp, "cert"), os.path.join(tmp, "key"))
    for port_name, port in job["ports"].items():
        results[port_name + " worker"] = attempt(port, *worker)
        results[port_name + " control"] = attempt(port, *job["controls"][port_name])
print(json.dumps(results))
"""

_TRY_CONNECT = r"""
import json, socket, sys
address, ports = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, port in ports.items():
    try:
        socket.create_connection((address, port), timeout=10).close()
        out[name] = "connected"
    except OSError as exc:
        out[name] = type(exc).__name__
print(json.dumps(out))
"""

ETCD_PORTS = {"client": layout.PORTS["etcd_client"], "peer": layout.PORTS["etcd_peer"]}
# etcd's own identities on the master: the apiserver's client certificate, the member's peer certificate.
CONTROLS = {
    "client": (f"{layout.DIRS.pki}/apiserver-etcd-client.crt", f"{layout.DIRS.pki}/apiserver-etcd-client.key"),
    "peer": (f"{layout.DIRS.pki}/etcd-peer.crt", f"{layout.DIRS.pki}/etcd-peer.key"),
}
KUBELET_KUBECONFIG = f"{layout.DIRS.kube}/kubelet.kubeconfig"


def _kubeconfig_identity(text: str) -> dict[str, str]:
    user = (yaml.safe_load(text) or {}).get("users", [{}])[0].get("user", {})
    return {
        "cert": base64.b64decode(user["client-certificate-data"]).decode(),
        "key": base64.b64decode(user["client-key-data"]).decode(),
    }


def judge_etcd_refusals(worker: str, tried: dict[str, str], reached: dict[str, str], exposed: bool = False) -> str:
    """Every worker attempt refused, every control accepted (else the probe proves nothing), and no port
    reached unless etcd is `exposed` on the node network (members of several serve the other masters there)."""
    problems = []
    for port in ETCD_PORTS:
        if not tried[f"{port} worker"].startswith("refused"):
            problems.append(f"etcd's {port} port accepted {worker}'s kubelet certificate ({tried[f'{port} worker']})")
        if not tried[f"{port} control"].startswith("accepted"):
            problems.append(f"etcd's own {port} certificate was not accepted either ({tried[f'{port} control']})")
        if reached[port] == "connected" and not exposed:
            problems.append(f"{worker} connects to etcd's {port} port on the master's address")
    if problems:
        raise CheckFailed("; ".join(problems))
    refusals = ", ".join(f"{p}: {tried[f'{p} worker'].removeprefix('refused: ')}" for p in ETCD_PORTS)
    unreached = ", ".join(f"{p} {reached[p]}" for p in ETCD_PORTS)
    return f"{worker}'s kubelet certificate refused ({refusals}); from {worker}: {unreached}"


def check_etcd_refuses_workers(lab: Lab) -> str:
    worker = lab.workers[0]
    identity = _kubeconfig_identity(lab.ssh.text(worker.name, f"cat {KUBELET_KUBECONFIG}"))
    # where the master's etcd member listens: loopback when it is the only one, else the node address
    member = next(m for m in endpoints.etcd_members(lab.cluster) if m.name == lab.master.name)
    job = {"worker": identity, "ports": ETCD_PORTS, "controls": CONTROLS, "address": member.address}
    script = f"python3 -c {shlex.quote(_TRY_IDENTITIES)}"
    tried = json.loads(lab.ssh.text(lab.master.name, script, input=json.dumps(job).encode(), timeout=120))
    connect = shlex.join(["python3", "-c", _TRY_CONNECT, str(lab.master.address), json.dumps(ETCD_PORTS)])
    reached = json.loads(lab.ssh.text(worker.name, connect, timeout=120))
    return judge_etcd_refusals(worker.name, tried, reached, exposed=member.address == str(lab.master.address))


def anonymous_urls(lab: Lab) -> list[str]:
    apis = [f"https://{m.address}:{layout.PORTS['apiserver']}" for m in lab.cluster.masters]
    urls = [f"{api}{path}" for api in apis for path in ("/api/v1/namespaces/kube-system/secrets", "/version")]
    return urls + [f"https://{w.address}:{layout.PORTS['kubelet']}/pods" for w in lab.workers]


def judge_anonymous(answers: dict[str, object]) -> str:
    """401 from every endpoint: the request was not even authenticated as system:anonymous."""
    allowed = {u: s for u, s in answers.items() if s != 401}
    if allowed:
        raise CheckFailed("not refused with 401: " + ", ".join(f"{u} -> {s}" for u, s in allowed.items()))
    return f"401 from all {len(answers)}: " + ", ".join(answers)


def _anonymous_status(prefix: Sequence[str], url: str) -> int | str:
    """The status a GET with no credentials at all gets (the server's certificate is not what is tested)."""
    done = subprocess.run(
        probe.local_argv(prefix, probe.get_args(url, 30, verify=False)),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    if done.returncode == 0:
        return probe.read_answer(done.stdout)[0]
    text = probe.failure(done.stderr).text
    status = re.match(r"HTTP (\d+):", text)
    return int(status.group(1)) if status else text


def check_anonymous_refused(lab: Lab) -> str:
    return judge_anonymous({url: _anonymous_status(lab.prefix, url) for url in anonymous_urls(lab)})


def probe_pod(name: str, image: str, privileged: bool) -> dict[str, Any]:
    """The checks' agnhost pod, never pulled; privileged: what Pod Security's baseline level forbids."""
    spec: dict[str, Any] = agnhost_deployment(name, image)["spec"]["template"]["spec"]
    if privileged:
        spec["containers"][0]["securityContext"] = {"privileged": True}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def check_privileged_pod_refused(lab: Lab) -> str:
    """A namespace that sets no Pod Security level gets the cluster's default (baseline): no privileged pod."""
    with scratch_namespace(lab, "podsec") as ns:
        # Admission wants the namespace's default ServiceAccount, which the controller-manager makes moments
        # after the namespace (longer after an apiserver restart).
        wait_for(
            f"ServiceAccount default in {ns}",
            lambda: lab.kubectl.run("get", "serviceaccount", "default", f"--namespace={ns}", "-o", "name"),
            120,
        )
        plain = probe_pod("plain", lab.agnhost_image, privileged=False)
        lab.kubectl.run("apply", "--dry-run=server", f"--namespace={ns}", "-f", "-", input=json.dumps(plain))
        refused = lab.kubectl.run(
            "apply",
            "--dry-run=server",
            f"--namespace={ns}",
            "-f",
            "-",
            input=json.dumps(probe_pod("privileged", lab.agnhost_image, privileged=True)),
            check=False,
        )
        if refused.returncode == 0:
            raise CheckFailed(f"a privileged pod was admitted in namespace {ns}: {refused.stdout.strip()}")
        reason = refused.stderr.strip()
        if "violates PodSecurity" not in reason:
            raise CheckFailed(f"the privileged pod failed for another reason than Pod Security: {reason[-300:]}")
        return f"plain pod admitted; privileged pod refused: {reason[reason.index('violates PodSecurity') :][:160]}"


AUDIT_LOG = f"{layout.DIRS.audit_log}/audit.log"


def check_audit_logged(lab: Lab) -> str:
    """A request made now (for a namespace that does not exist) appears in the master's audit log."""
    marker = f"verify-audit-{secrets.token_hex(4)}"
    lab.kubectl.run("get", "namespace", marker, check=False)

    def logged() -> str:
        found = lab.ssh.run(lab.master.name, f"grep -c -- {marker} {AUDIT_LOG}", check=False)
        count = found.stdout.decode().strip()
        if found.returncode != 0:
            raise NotYet(f"{marker} not in {AUDIT_LOG} ({count or found.stderr.decode().strip()[-200:]})")
        return count

    count = wait_for(f"the request for namespace {marker} in {AUDIT_LOG}", logged, 60, interval=3)
    return f"GET namespace {marker} recorded in {AUDIT_LOG} on {lab.master.name} ({count} line(s))"


def judge_current_key(current: str, stored: dict[str, str]) -> str:
    """Every Secret etcd holds is under `current` (encryption.envelope's terms, e.g. "secretbox:key1")."""
    others = {name: how for name, how in stored.items() if how != current}
    if others:
        raise CheckFailed(
            f"{len(others)} of {len(stored)} Secret(s) in etcd are not under the config's first key {current}: "
            f"{encryption.describe(others)}; `provisioner secrets rotate-key` writes every Secret again"
        )
    if not stored:
        return f"etcd holds no Secret yet; a new one goes under {current}"
    return f"all {len(stored)} Secret(s) in etcd are stored under {current}, the config's first key"


def check_secrets_current_key(lab: Lab) -> str:
    master = lab.master.name
    source = f"{master}:{layout.ENCRYPTION_CONFIG}"
    # Parsed here, never shown: the file holds the keys.
    config = encryption.parse_config(lab.ssh.run(master, f"cat {layout.ENCRYPTION_CONFIG}").stdout, source)
    current = encryption.current_envelope(config, source)
    listing = lab.ssh.run(master, encryption.etcdctl_get(encryption.SECRETS_PREFIX, prefix=True), timeout=120)
    return judge_current_key(current, encryption.stored_under(listing.stdout))


def check_qemu_unprivileged(lab: Lab) -> str:
    """Every lab VM's QEMU runs as libvirt-qemu (not root) under seccomp, and sees none of root's files."""
    provider = lab.provider
    if not isinstance(provider, VagrantLab) or not provider.isolated:
        raise Skip("no lab VMs on this machine (static hosts, or a system libvirtd's own settings)")
    uid = pwd.getpwnam(netns.QEMU_USER).pw_uid
    found = netns.qemu_processes(provider.names["prefix"])
    missing = {f"{provider.names['prefix']}{n.name}" for n in lab.cluster.spec.nodes} - found.keys()
    problems = [f"no QEMU process for {name}" for name in sorted(missing)]
    for name, proc in sorted(found.items()):
        if proc.uid != uid:
            problems.append(f"{name} (pid {proc.pid}) runs as uid {proc.uid}, not {netns.QEMU_USER} ({uid})")
        if proc.seccomp != 2:
            problems.append(f"{name} (pid {proc.pid}) has no seccomp filter (Seccomp: {proc.seccomp})")
        # What QEMU would see of the cluster's keys, through its own mount namespace.
        seen = Path(f"/proc/{proc.pid}/root") / provider.state.pki_dir.relative_to("/")
        if seen.exists():
            problems.append(f"{name} (pid {proc.pid}) can see {provider.state.pki_dir}")
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"{len(found)} QEMU process(es) as {netns.QEMU_USER} (uid {uid}), seccomp filter on, PKI not visible"


GROUP = [
    ClusterCheck(
        "anonymous-refused",
        "a request with no credentials is refused (401) by the apiserver and by every kubelet",
        check_anonymous_refused,
    ),
    ClusterCheck(
        "privileged-pod-refused",
        "a privileged pod is refused by Pod Security in a namespace without a level of its own; a plain pod is not",
        check_privileged_pod_refused,
    ),
    ClusterCheck("audit-logged", "a request made now is recorded in the apiserver's audit log", check_audit_logged),
    ClusterCheck(
        "qemu-unprivileged",
        "each lab VM's QEMU runs as an unprivileged user under a seccomp filter and cannot see the cluster's keys",
        check_qemu_unprivileged,
    ),
    ClusterCheck(
        "etcd-refuses-workers",
        "a worker's kubelet certificate is refused on etcd's client and peer ports (etcd's own are accepted), "
        "and, with one master, no worker connects to either",
        check_etcd_refuses_workers,
    ),
    ClusterCheck(
        "secrets-current-key",
        "every Secret in etcd is stored under the encryption config's first (current) key, "
        "none under an older key or in plain text",
        check_secrets_current_key,
    ),
]
