"""What every node promises: certificates valid and named right, secrets private, swap off, kernel ready."""

from __future__ import annotations

import datetime
import stat
from typing import Any

import pytest
from testinfra.host import Host

from provisioner import layout
from provisioner.verify import certs
from provisioner.verify.hosts.helpers import assert_service, renew_before

testinfra_hosts = ["ansible://k8s_cluster"]

# The kubelet's own renewed client certificate (and its key) are in its certificate dir.
CONFIG_DIRS = [layout.DIRS.kube, layout.KUBELET_CERT_DIR]
# A file holding any of these is a secret: private keys, kubeconfigs with client keys, the encryption key.
SECRET_MARKERS = ["PRIVATE KEY", "client-key-data", "kind: EncryptionConfiguration"]
SYSCTLS = layout.SYSCTLS
MODULES = list(layout.KERNEL_MODULES)
# Units every node runs, whatever its role.
NODE_UNITS = [u for u in layout.UNITS if set(u.roles) == set(layout.ROLES)]


@pytest.mark.parametrize("unit", [u.name for u in NODE_UNITS])
def test_service(host: Host, unit: str) -> None:
    """systemd unit {unit} is active and enabled"""
    assert_service(host, unit)


def _find(host: Host, expression: str) -> list[str]:
    dirs = " ".join(CONFIG_DIRS)
    out = host.check_output(f"find {dirs} -type f \\( {expression} \\) 2>/dev/null || true")
    return sorted(line for line in out.splitlines() if line)


def test_certificates_valid(host: Host, facts: dict[str, Any]) -> None:
    """every certificate under the Kubernetes config dir (files and kubeconfigs) and the kubelet's renewed one
    is valid now and for longer than spec.pki.renewBefore"""
    now = datetime.datetime.now(datetime.UTC)
    files = _find(host, "-name '*.crt' -o -name '*.pem' -o -name '*.kubeconfig'")
    assert files, "no certificate or kubeconfig found under " + ", ".join(CONFIG_DIRS)
    problems: list[str] = []
    seen = 0
    for path in files:
        content = host.file(path).content
        found = certs.kubeconfig_certs(content.decode()) if path.endswith(".kubeconfig") else certs.read_pem(content)
        seen += len(found)
        for cert in found:
            problems += certs.validity_problems(path, cert, now, renew_before(facts))
    assert seen, f"none of {files} holds a certificate"
    assert not problems, "; ".join(problems)


def test_secrets_private(host: Host) -> None:
    """private keys, kubeconfigs and the encryption key are mode 0600 and owned by root:root"""
    pattern = "|".join(SECRET_MARKERS)
    dirs = " ".join(CONFIG_DIRS)
    # One command for every file: each SSH round trip costs seconds on an emulated node.
    out = host.check_output(f"grep -rlE '{pattern}' {dirs} 2>/dev/null | xargs -r stat -c '%a %U %G %n'")
    secrets = [line.split(" ", 3) for line in out.splitlines() if line]
    assert secrets, "no private key found under " + ", ".join(CONFIG_DIRS)
    loose = [
        f"{path} is {stat.filemode(stat.S_IFREG | int(mode, 8))} {user}:{group}"
        for mode, user, group, path in secrets
        if (mode, user, group) != ("600", "root", "root")
    ]
    assert not loose, "; ".join(loose)


def test_swap_off(host: Host) -> None:
    """no swap is active (the kubelet's memory accounting assumes none)"""
    active = host.file("/proc/swaps").content_string.strip().splitlines()[1:]
    assert not active, f"active swap: {active}"


@pytest.mark.parametrize("key", sorted(SYSCTLS))
def test_sysctl(host: Host, key: str) -> None:
    """kernel setting {key} is 1"""
    assert host.sysctl(key) == SYSCTLS[key], f"{key} = {host.sysctl(key)}"


@pytest.mark.parametrize("module", MODULES)
def test_kernel_module(host: Host, module: str) -> None:
    """kernel module {module} is loaded"""
    assert host.file(f"/sys/module/{module}").is_directory, f"{module} is not loaded"
