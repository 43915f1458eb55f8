"""A cluster as the Secret key rotation sees it: one kube-apiserver per master over one etcd, in memory.

The rotation (provisioner/encryption.py) runs for real against it: its config files, record and steps are
the real ones; only the cluster's side is simulated, answering in the formats the real tools print
(`etcdctl get -w json`, the apiserver's metric line, kubectl replace's output; compare the recordings in
tests/unit/data). What the simulation holds to, as the real components do:

- each apiserver runs with the config its master's file held when it last re-read it, `reload_after`
  calls after the file changed (the real one polls once a minute), and reports that file's hash;
- an apiserver writes with its first secretbox key and can read only what was stored under a key it holds
  (name and secret). Whenever some apiserver holds a Secret it cannot read, that is recorded in `lost`:
  the damage a wrong order of steps does;
- writes reach the apiservers in turn, as through a load balancer, and another client keeps updating the
  Secret default/busy, so the rotation's kubectl replace meets real conflicts;
- `interrupt_at`: the call with that number raises Interrupted, as if the command was stopped there.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provisioner import encryption
from provisioner.kube import KubectlError


@functools.cache
def _secretbox_keys(config: bytes) -> list[dict[str, str]]:
    keys: list[dict[str, str]] = yaml.safe_load(config)["resources"][0]["providers"][0]["secretbox"]["keys"]
    return keys


class Interrupted(Exception):
    """The command was stopped at this call."""


@dataclass
class Stored:
    key_name: str
    key_secret: str
    data: dict[str, str]
    version: int


class SimCluster:
    def __init__(
        self,
        pki_dir: Path,
        masters: Sequence[str] = ("master",),
        secrets: Sequence[str] = ("default/app", "default/busy", "kube-system/bootstrap"),
        reload_after: Mapping[str, int] | None = None,
        busy_writer: bool = True,
    ) -> None:
        self.pki_dir = pki_dir
        self.masters = list(masters)
        local = encryption.config_path(pki_dir).read_bytes()
        self.files = {m: local for m in self.masters}  # what `up` installed
        self.running = dict(self.files)  # the file each apiserver runs with
        self.reload_after = dict(reload_after or {m: i + 2 for i, m in enumerate(self.masters)})
        self.countdown: dict[str, int] = {}
        self.store: dict[str, Stored] = {}
        self.version = 0
        self.turn = 0
        self.calls = 0
        self.pushed: list[list[str]] = []  # the key names of each config pushed, in order
        self.interrupt_at: int | None = None
        self.busy_writer = busy_writer
        self.lost: list[str] = []
        self.log: list[str] = []  # every call, for the tests' own failure messages
        for name in secrets:
            self._write(self.masters[0], name, {"value": base64.b64encode(name.encode()).decode()})

    # --- the Remote the rotation talks to

    def push(self) -> None:
        self._tick("push")
        local = encryption.config_path(self.pki_dir).read_bytes()
        self.pushed.append(encryption.key_names(yaml.safe_load(local), "pushed"))
        for m in self.masters:
            if self.files[m] != local:
                self.files[m] = local
                self.countdown[m] = self.reload_after[m]

    def metrics(self, master: str) -> str:
        self._tick(f"metrics {master}")
        ident = hashlib.sha256(master.encode()).hexdigest()
        digest = hashlib.sha256(self.running[master]).hexdigest()
        return f'{encryption.LOADED_METRIC}{{apiserver_id_hash="sha256:{ident}",hash="sha256:{digest}"}} 1\n'

    def etcd(self, key: str, prefix: bool = False) -> bytes:
        self._tick(f"etcd {key}")
        header = {"cluster_id": 1, "member_id": 2, "revision": self.version, "raft_term": 2}
        paths = sorted(p for p in self.store if (p.startswith(key) if prefix else p == key))
        if not paths:
            return json.dumps({"header": header}).encode() + b"\n"
        kvs = []
        for path in paths:
            st = self.store[path]
            raw = f"k8s:enc:secretbox:v1:{st.key_name}:".encode() + os.urandom(40)
            kvs.append(
                {
                    "key": base64.b64encode(path.encode()).decode(),
                    "create_revision": 1,
                    "mod_revision": st.version,
                    "version": 1,
                    "value": base64.b64encode(raw).decode(),
                }
            )
        return json.dumps({"header": header, "kvs": kvs, "count": len(kvs)}).encode() + b"\n"

    def apply(self, doc: Mapping[str, Any]) -> None:
        self._tick("apply")
        meta = doc["metadata"]
        data = {k: base64.b64encode(v.encode()).decode() for k, v in doc.get("stringData", {}).items()}
        self._write(self._next(), f"{meta['namespace']}/{meta['name']}", data)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        self._tick(f"get {namespace}/{name}")
        return self._item(self._next(), f"{namespace}/{name}")

    def secrets(self) -> list[dict[str, Any]]:
        self._tick("get secrets -A")
        server = self._next()
        return [self._item(server, name) for name in sorted(self._names())]

    def replace(self, items: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
        self._tick(f"replace {len(items)}")
        out, err = [], []
        for item in items:
            meta = item["metadata"]
            name = f"{meta['namespace']}/{meta['name']}"
            path = encryption.SECRETS_PREFIX + name
            if path not in self.store:
                err.append(
                    f'Error from server (NotFound): error when replacing "STDIN": secrets "{meta["name"]}" not found'
                )
            elif str(self.store[path].version) != meta["resourceVersion"]:
                err.append(
                    f'Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on '
                    f'secrets "{meta["name"]}": the object has been modified; please apply your changes to the '
                    "latest version and try again"
                )
            else:
                self._write(self._next(), name, dict(item["data"]))
                out.append(f"secret/{meta['name']} replaced")
        return "".join(f"{line}\n" for line in out), "".join(f"{line}\n" for line in err)

    def delete_secret(self, namespace: str, name: str) -> None:
        self._tick(f"delete {namespace}/{name}")
        self.store.pop(f"{encryption.SECRETS_PREFIX}{namespace}/{name}", None)

    # --- what the tests look at

    def stored_keys(self) -> dict[str, str]:
        return {path.removeprefix(encryption.SECRETS_PREFIX): st.key_name for path, st in self.store.items()}

    def running_keys(self, master: str) -> list[str]:
        return [k["name"] for k in self._keys(master)]

    # --- the simulation

    def _tick(self, what: str) -> None:
        self.calls += 1
        self.log.append(what)
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise Interrupted(f"interrupted at call {self.calls} ({what})")
        for m, left in list(self.countdown.items()):
            if left <= 1:
                self.running[m] = self.files[m]
                del self.countdown[m]
            else:
                self.countdown[m] = left - 1
        if self.busy_writer and encryption.SECRETS_PREFIX + "default/busy" in self.store:
            path = encryption.SECRETS_PREFIX + "default/busy"
            server = self._next()
            if self._readable(server, path):
                self._write(server, "default/busy", {"count": base64.b64encode(str(self.calls).encode()).decode()})
        self._check()

    def _next(self) -> str:
        self.turn += 1
        return self.masters[self.turn % len(self.masters)]

    def _keys(self, master: str) -> list[dict[str, str]]:
        return _secretbox_keys(self.running[master])

    def _readable(self, master: str, path: str) -> bool:
        st = self.store[path]
        return any(k["name"] == st.key_name and k["secret"] == st.key_secret for k in self._keys(master))

    def _write(self, master: str, name: str, data: dict[str, str]) -> None:
        first = self._keys(master)[0]
        self.version += 1
        path = encryption.SECRETS_PREFIX + name
        self.store[path] = Stored(first["name"], first["secret"], data, self.version)
        self._check()

    def _item(self, master: str, name: str) -> dict[str, Any]:
        path = encryption.SECRETS_PREFIX + name
        if path not in self.store:
            raise KubectlError(f"kubectl get secret {name}", "NotFound", "")
        if not self._readable(master, path):
            raise KubectlError(f"kubectl get secret {name}", f"Internal error: {master} cannot decrypt it", "")
        st = self.store[path]
        namespace, short = name.split("/", 1)
        meta = {"name": short, "namespace": namespace, "resourceVersion": str(st.version)}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": dict(st.data)}

    def _names(self) -> list[str]:
        return [p.removeprefix(encryption.SECRETS_PREFIX) for p in self.store]

    def _check(self) -> None:
        for m in self.masters:
            for path, st in self.store.items():
                if not self._readable(m, path):
                    problem = f"{m} cannot read {path} (stored under {st.key_name})"
                    if problem not in self.lost:
                        self.lost.append(problem)
