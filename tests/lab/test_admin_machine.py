"""The admin machine as a user finds it after `up`: `kubectl get nodes` from their own shell.

kubectl runs here as a plain process on the host, outside the lab's network namespace, with no
--kubeconfig: PATH finds the cluster's own kubectl and the merged context's server is the loopback
forwarder into the lab.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from labcluster import LabCluster

from provisioner import admin, forwarder

pytestmark = [pytest.mark.lab, pytest.mark.cluster]


def _user_env(kubeconfig: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["KUBECONFIG"] = str(kubeconfig)
    return env


def _kubeconfig_of_the_user(lab: LabCluster, user_kubeconfig: Path | None) -> Path:
    path = user_kubeconfig or admin.merged_path(lab.state)
    if path is None:
        pytest.skip("the running lab was brought up with --no-merge-kubeconfig")
    return path


def test_kubectl_on_path_reaches_the_cluster_through_the_merged_context(
    lab_cluster: LabCluster, user_kubeconfig: Path | None
) -> None:
    found = shutil.which("kubectl")
    assert found is not None, "no kubectl on PATH after up"
    assert Path(found).resolve() == lab_cluster.kubectl_path.resolve(), f"PATH finds {found}, not the cluster's"
    kubeconfig = _kubeconfig_of_the_user(lab_cluster, user_kubeconfig)
    env = _user_env(kubeconfig)
    context = subprocess.run(["kubectl", "config", "current-context"], env=env, capture_output=True, text=True)
    assert context.stdout.strip() == lab_cluster.cluster.name, context.stderr
    nodes = subprocess.run(
        ["kubectl", "get", "nodes", "-o", "name"], env=env, capture_output=True, text=True, timeout=60
    )
    assert nodes.returncode == 0, nodes.stderr
    assert sorted(nodes.stdout.split()) == sorted(f"node/{n.name}" for n in lab_cluster.cluster.workers)
    server = yaml.safe_load(kubeconfig.read_text())["clusters"]
    ours = next(c for c in server if c["name"] == lab_cluster.cluster.name)["cluster"]["server"]
    fwd = forwarder.running(lab_cluster.state)
    assert fwd is not None and ours == fwd.url


def test_the_forwarder_listens_on_loopback_only(lab_cluster: LabCluster) -> None:
    fwd = forwarder.running(lab_cluster.state)
    assert fwd is not None
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port = fields[1].split(":")
        if int(port, 16) == fwd.port and fields[3] == "0A":
            listening.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    assert listening == {"127.0.0.1"}
    tcp6 = Path("/proc/net/tcp6").read_text() if Path("/proc/net/tcp6").exists() else ""
    assert f":{fwd.port:04X} " not in tcp6
