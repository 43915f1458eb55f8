"""The Secrets' encryption at rest: the encryption config in the PKI directory, and the rotation of its key.

`ensure_config` makes ``encryption-config.yaml`` once (pki.ensure calls it): one secretbox key, ``key1``,
then ``identity``. The PKI phase installs it on the masters as layout.ENCRYPTION_CONFIG, and the apiserver
re-reads it by itself (--encryption-provider-config-automatic-reload polls the file once a minute).

`rotate` replaces the key as the Kubernetes docs do it ("Encrypting Confidential Data at Rest", "Rotating
a decryption key"):

1. a new secretbox key, named after the existing ones (key1 -> key2), goes first and the old one second:
   new writes use the new key and everything written before stays readable. With several masters the new
   key is first added second everywhere, and made first only once every apiserver has loaded it, so no
   apiserver writes with a key another one cannot read yet;
2. the file goes to every master; the step ends when each apiserver reports the file's hash as the config
   it runs with, and a probe Secret written now is stored in etcd as ``k8s:enc:secretbox:v1:NEW:``;
3. every Secret is written again (``kubectl get secrets -A -o json | kubectl replace -f -``), rounds
   repeating what a conflict with another writer left out;
4. only when etcd holds no Secret under any other key does the old key leave the file, which goes to the
   masters again.

Every step is idempotent. The config file says how far a rotation got (its keys, in order) and
``encryption-rotation.json`` beside it names the rotation under way (the old and new key names, never key
material), so running the command again after an interruption resumes where it stopped. Key material is
never put into an event, an error or a log line. Everything asked of the cluster goes through a
:class:`Remote`; :class:`LiveCluster` is the real one.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import re
import secrets
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from provisioner import inventory, layout, providers, runner
from provisioner.artifacts import artifact_set
from provisioner.errors import PlaybookError, ProvisionerError, ToolMissing
from provisioner.events import EventBus, Phase
from provisioner.files import write_atomic
from provisioner.hosts import NodeCommandError
from provisioner.kube import Kubectl, KubectlError
from provisioner.spec import Cluster, StaticProvider
from provisioner.state import State

T = TypeVar("T")

CONFIG_FILE = "encryption-config.yaml"  # in the PKI directory; site.yml installs it as layout.ENCRYPTION_CONFIG
RECORD_FILE = "encryption-rotation.json"  # beside it while a rotation is under way
FIRST_KEY = "key1"
SECRETS_PREFIX = "/registry/secrets/"
PROBE_NAMESPACE, PROBE_NAME = "kube-system", "provisioner-encryption-probe"
PROBE_KEY = f"{SECRETS_PREFIX}{PROBE_NAMESPACE}/{PROBE_NAME}"
# The tag of site.yml's play that installs the encryption config and nothing else.
PUSH_TAG = "encryption-config"
# The apiserver's own statement of the encryption config it runs with: the file's sha256 as a label.
LOADED_METRIC = "apiserver_encryption_config_controller_last_config_info"
# The apiserver polls the file once a minute; three minutes leave room for a slow poll on an emulated master.
WAIT_SECONDS = 180.0
POLL_SECONDS = 5.0
# Rounds of `kubectl replace`: each one writes again what the previous one lost to a conflict.
REWRITE_ROUNDS = 5
PLAIN = "plain text"

# How far a rotation old -> new got, read from the order of the config's secretbox keys.
START = "start"  # [old]: nothing written yet
ADDED = "added"  # [old, new]: every apiserver can read the new key, none writes with it (several masters)
PROMOTED = "promoted"  # [new, old]: new writes use the new key, the old one still reads
RETIRED = "retired"  # [new]: the old key is gone from the file


class EncryptionConfigError(ProvisionerError):
    """The encryption config or the rotation record is missing or not one this tool wrote."""


class RotationError(ProvisionerError):
    """A step of the key rotation could not finish."""


# --- the config file ---------------------------------------------------------------------------------


def config_path(pki_dir: Path) -> Path:
    return pki_dir / CONFIG_FILE


def record_path(pki_dir: Path) -> Path:
    return pki_dir / RECORD_FILE


def new_secret() -> str:
    """A secretbox key (XSalsa20-Poly1305): 32 random bytes, base64. Not aescbc: the Kubernetes docs advise
    against it (padding-oracle prone)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def fresh_config() -> dict[str, Any]:
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [{"secretbox": {"keys": [_key(FIRST_KEY, new_secret())]}}, {"identity": {}}],
            }
        ],
    }


def ensure_config(pki_dir: Path) -> bool:
    """Make the config once; True when it was written now, False when the one there is kept."""
    path = config_path(pki_dir)
    if not path.exists():
        write_config(pki_dir, fresh_config())
        return True
    doc = read_config(pki_dir)
    listed = _providers(doc, str(path))
    if "secretbox" in listed[0]:
        return False
    # A cluster made before secretbox: new writes use a secretbox key, and the old providers stay after it
    # so what was written with them can still be read (a rotation later drops them).
    listed.insert(0, {"secretbox": {"keys": [_key("secretbox-1", new_secret())]}})
    write_config(pki_dir, doc)
    return True


def parse_config(text: bytes | str, source: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        # Not the parser's own message: it quotes the offending line, which may hold a key.
        raise EncryptionConfigError(
            source, f"is not valid YAML{where}", "restore it; `provisioner up` writes a new one if it is gone"
        ) from None
    if not isinstance(doc, dict):
        raise EncryptionConfigError(source, "is not an EncryptionConfiguration", "restore it from a backup")
    return doc


def read_config(pki_dir: Path) -> dict[str, Any]:
    path = config_path(pki_dir)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise EncryptionConfigError(
            str(path), "does not exist: the cluster's PKI was never made", "bring the cluster up with `provisioner up`"
        ) from None
    return parse_config(text, str(path))


def write_config(pki_dir: Path, doc: Mapping[str, Any]) -> None:
    write_atomic(config_path(pki_dir), yaml.safe_dump(dict(doc), sort_keys=False).encode(), 0o600)


def key_names(doc: Mapping[str, Any], source: str) -> list[str]:
    """The names of the first provider's secretbox keys, in order: the first one encrypts new writes."""
    return [k["name"] for k in _secretbox_keys(doc, source)]


def current_envelope(doc: Mapping[str, Any], source: str) -> str:
    """What a Secret written now is stored as, in envelope() terms ("secretbox:key1")."""
    return f"secretbox:{key_names(doc, source)[0]}"


def next_key_name(doc: Mapping[str, Any], source: str) -> str:
    """key1 -> key2: one more than the highest number any key of any provider ends in."""
    numbers = [0]
    for provider in _providers(doc, source):
        for settings in provider.values():
            keys = settings.get("keys") if isinstance(settings, dict) else None
            for key in keys if isinstance(keys, list) else []:
                found = re.search(r"(\d+)$", str(key.get("name", ""))) if isinstance(key, dict) else None
                if found:
                    numbers.append(int(found.group(1)))
    return f"key{max(numbers) + 1}"


def with_secretbox_keys(
    doc: Mapping[str, Any], keys: Sequence[Mapping[str, str]], *, only: bool = False
) -> dict[str, Any]:
    """A copy of the config whose secretbox provider holds `keys`; `only`: nothing but it and identity after."""
    changed = copy.deepcopy(dict(doc))
    resource = changed["resources"][0]
    resource["providers"][0] = {"secretbox": {"keys": [dict(k) for k in keys]}}
    if only:
        resource["providers"] = [resource["providers"][0], {"identity": {}}]
    return changed


def _key(name: str, secret: str) -> dict[str, str]:
    return {"name": name, "secret": secret}


def _providers(doc: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    try:
        listed = doc["resources"][0]["providers"]
    except (KeyError, IndexError, TypeError):
        listed = None
    if not isinstance(listed, list) or not listed or not all(isinstance(p, dict) for p in listed):
        raise EncryptionConfigError(
            source, "has no list of providers under resources[0].providers", "restore it from a backup"
        )
    return listed


def _secretbox_keys(doc: Mapping[str, Any], source: str) -> list[dict[str, str]]:
    first = _providers(doc, source)[0]
    settings = first.get("secretbox")
    keys = settings.get("keys") if isinstance(settings, dict) else None
    if not isinstance(keys, list) or not keys or not all(_is_key(k) for k in keys):
        raise EncryptionConfigError(
            source,
            f"its first provider is {', '.join(first) or 'empty'}, not secretbox with named keys",
            "run `provisioner up`, which puts a secretbox key first",
        )
    return keys


def _is_key(key: object) -> bool:
    return isinstance(key, dict) and isinstance(key.get("name"), str) and isinstance(key.get("secret"), str)


# --- the rotation record and plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    """A rotation under way: the key names only."""

    old: str
    new: str


def read_record(pki_dir: Path) -> Rotation | None:
    path = record_path(pki_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data[k] for k in ("old", "new")):
        raise EncryptionConfigError(
            str(path),
            'is not a rotation record ({"old": NAME, "new": NAME})',
            f"remove it if {CONFIG_FILE} holds one key, else write the names of its second and first key",
        )
    return Rotation(data["old"], data["new"])


def write_record(pki_dir: Path, rotation: Rotation) -> None:
    text = json.dumps({"old": rotation.old, "new": rotation.new}) + "\n"
    write_atomic(record_path(pki_dir), text.encode(), 0o600)


def stage_of(doc: Mapping[str, Any], rotation: Rotation, source: str) -> str:
    names = tuple(key_names(doc, source))
    old, new = rotation.old, rotation.new
    stages = {(old,): START, (old, new): ADDED, (new, old): PROMOTED, (new,): RETIRED}
    if names not in stages:
        raise EncryptionConfigError(
            source,
            f"holds the secretbox keys {', '.join(names)}, which is no step of the rotation {old} -> {new} "
            f"recorded in {RECORD_FILE}",
            f"put back the file with keys [{old}], [{new}, {old}] or [{new}] that this rotation wrote last",
        )
    return stages[names]


# What comes next at each stage, for a person deciding whether to resume.
STEPS = {
    START: "next: add the new key",
    ADDED: "next: make the new key the one that writes",
    PROMOTED: "next: write every Secret again with the new key",
    RETIRED: "next: remove the old key from the masters",
}


@dataclass(frozen=True)
class Plan:
    """What `rotate` will do: which rotation, from which step, on which masters."""

    rotation: Rotation
    stage: str
    resuming: bool
    masters: tuple[str, ...]

    @property
    def two_step(self) -> bool:
        """Several apiservers: the new key is readable everywhere before any of them writes with it."""
        return len(self.masters) > 1

    def question(self, cluster: str) -> str:
        old, new = self.rotation.old, self.rotation.new
        if self.resuming:
            return f"resume rotating cluster {cluster}'s Secret encryption key {old} -> {new} ({STEPS[self.stage]})?"
        return (
            f"rotate cluster {cluster}'s Secret encryption key: a new key {new} on {', '.join(self.masters)}, "
            f"every Secret written again with it, then {old} removed?"
        )


def plan(pki_dir: Path, masters: Sequence[str]) -> Plan:
    """What `rotate` would do now. Reads the PKI directory; writes nothing."""
    source = str(config_path(pki_dir))
    doc = read_config(pki_dir)
    names = key_names(doc, source)
    rotation = read_record(pki_dir)
    if rotation is None:
        if len(names) != 1:
            record = json.dumps({"old": names[-1], "new": names[0]})
            raise EncryptionConfigError(
                source,
                f"holds {len(names)} secretbox keys ({', '.join(names)}) but no rotation is recorded in {RECORD_FILE}",
                f"to finish a rotation started by hand, write {record} to {record_path(pki_dir)} and run again; "
                "otherwise put back the file with one key",
            )
        return Plan(Rotation(names[0], next_key_name(doc, source)), START, False, tuple(masters))
    return Plan(rotation, stage_of(doc, rotation, source), True, tuple(masters))


# --- reading what the cluster says ---------------------------------------------------------------------


def envelope(raw: bytes) -> str:
    """The provider and key an etcd value is stored with ("secretbox:key2"), or PLAIN when it is not encrypted."""
    if not raw.startswith(b"k8s:enc:"):
        return PLAIN
    # k8s:enc:<provider>:<version>:<key or provider name>:<ciphertext>
    parts = raw.split(b":", 5)
    if len(parts) < 6:
        return "an unreadable envelope"
    return f"{parts[2].decode(errors='replace')}:{parts[4].decode(errors='replace')}"


def stored_under(etcdctl_json: bytes | str) -> dict[str, str]:
    """Each Secret in an `etcdctl get ... -w json` answer, as NAMESPACE/NAME, with the envelope() it is stored in."""
    try:
        data = json.loads(etcdctl_json)
        kvs = data.get("kvs") or []
        found = {}
        for kv in kvs:
            key = base64.b64decode(kv["key"]).decode(errors="replace")
            found[key.removeprefix(SECRETS_PREFIX)] = envelope(base64.b64decode(kv.get("value", "")))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProvisionerError(
            "etcdctl get -w json on the master",
            f"answered something that is not etcd's JSON ({type(exc).__name__})",
            "run the command on the master by hand to see what it prints",
        ) from None
    return found


def etcdctl_get(key: str, prefix: bool = False) -> str:
    """The shell command that prints KEY (or every key under it) from etcd on the master as JSON."""
    return f"{layout.ETCDCTL} get {shlex.quote(key)}{' --prefix' if prefix else ''} -w json"


def describe(stored: Mapping[str, str], limit: int = 8) -> str:
    """Secrets grouped by envelope: "secretbox:key1: default/a, kube-system/b; plain text: x/y"."""
    grouped: dict[str, list[str]] = {}
    for name, how in sorted(stored.items()):
        grouped.setdefault(how, []).append(name)
    parts = []
    for how, names in sorted(grouped.items()):
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        parts.append(f"{how}: {', '.join(names[:limit])}{more}")
    return "; ".join(parts)


def loaded_hashes(metrics: str) -> list[str]:
    """The `hash` label of each LOADED_METRIC sample: which config file each apiserver runs with."""
    found = []
    for line in metrics.splitlines():
        if line.startswith(LOADED_METRIC + "{"):
            label = re.search(r'[{,]hash="([^"]*)"', line)
            if label:
                found.append(label.group(1))
    return found


def runs_config(hashes: Sequence[str], data: bytes) -> bool:
    """Whether a reported hash is this file's (releases print the hex digest bare or behind a "scheme:")."""
    want = hashlib.sha256(data).hexdigest()
    return any(h == want or h.endswith(":" + want) for h in hashes)


def replaced_count(stdout: str) -> int:
    return sum(1 for line in stdout.splitlines() if re.fullmatch(r"secret/\S+ replaced", line.strip()))


def replace_errors(stderr: str) -> str:
    """kubectl replace's errors counted by reason ("2 Conflict"), never quoted: a message may echo an object."""
    reasons = Counter(m.group(1) for m in re.finditer(r"Error from server \((\w+)\)", stderr))
    other = sum(1 for line in stderr.splitlines() if line.startswith("error")) - sum(reasons.values())
    parts = [f"{n} {reason}" for reason, n in sorted(reasons.items())]
    if other > 0 or not parts:
        parts.append(f"{max(other, 1)} other error(s)")
    return ", ".join(parts)


def probe_secret(value: str) -> dict[str, Any]:
    """A Secret holding a random marker of no use to anyone, written to see which key the apiserver uses."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": PROBE_NAME,
            "namespace": PROBE_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "provisioner"},
        },
        "type": "Opaque",
        "stringData": {"marker": value},
    }


# --- the rotation --------------------------------------------------------------------------------------


class Remote(Protocol):
    """What a rotation asks of the cluster. LiveCluster is the real one; the unit tests simulate one."""

    def push(self) -> None:
        """Install the PKI directory's encryption config on every master (0600 root:root)."""

    def metrics(self, master: str) -> str:
        """The LOADED_METRIC lines of the apiserver on that master."""

    def etcd(self, key: str, prefix: bool = False) -> bytes:
        """What `etcdctl_get(key, prefix)` prints on the (first) master."""

    def apply(self, doc: Mapping[str, Any]) -> None: ...

    def get_secret(self, namespace: str, name: str) -> dict[str, Any]: ...

    def secrets(self) -> list[dict[str, Any]]:
        """Every Secret of every namespace, as `kubectl get secrets -A -o json` lists them."""

    def replace(self, items: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
        """`kubectl replace -f -` of those Secrets as one List: its stdout and stderr."""

    def delete_secret(self, namespace: str, name: str) -> None: ...


@dataclass(frozen=True)
class StepTiming:
    name: str
    seconds: float


@dataclass
class RotationResult:
    old: str
    new: str
    resumed: bool
    rewritten: int = 0
    steps: list[StepTiming] = field(default_factory=list)


class _NotYet(Exception):
    """A wait's condition does not hold yet; the message says what was seen."""


def rotate(
    planned: Plan,
    pki_dir: Path,
    remote: Remote,
    bus: EventBus,
    *,
    timeout: float | None = None,
    interval: float | None = None,
) -> RotationResult:
    """Carry the rotation `planned` through to its end from the step it is at (see the module's docstring).

    Each wait gives up after `timeout` seconds (WAIT_SECONDS), asking again every `interval` (POLL_SECONDS)."""
    timeout = WAIT_SECONDS if timeout is None else timeout
    interval = POLL_SECONDS if interval is None else interval
    return _Rotator(planned, pki_dir, remote, bus, timeout, interval).run()


class _Rotator:
    def __init__(
        self, planned: Plan, pki_dir: Path, remote: Remote, bus: EventBus, timeout: float, interval: float
    ) -> None:
        self.plan, self.pki_dir, self.remote, self.bus = planned, pki_dir, remote, bus
        self.timeout, self.interval = timeout, interval
        self.old, self.new = planned.rotation.old, planned.rotation.new
        self.source = str(config_path(pki_dir))
        self.result = RotationResult(self.old, self.new, planned.resuming)

    def run(self) -> RotationResult:
        # The record first: from here on an interruption resumes this rotation instead of starting another.
        write_record(self.pki_dir, self.plan.rotation)
        stage = self._stage()
        if stage == START:
            old_key = self._keys()[0]
            new_key = _key(self.new, new_secret())
            self._write([old_key, new_key] if self.plan.two_step else [new_key, old_key])
            stage = self._stage()
        if stage == ADDED:
            with self._step(f"add {self.new}", "second on every master: readable before anyone writes with it") as p:
                self._push_and_wait_loaded(p)
                old_key, new_key = self._keys()
                self._write([new_key, old_key])
            stage = PROMOTED
        if stage == PROMOTED:
            with self._step(f"write with {self.new}", f"{self.new} first, {self.old} still reads") as p:
                self._push_and_wait_loaded(p)
                self._probe(p)
            with self._step("rewrite secrets", "kubectl get secrets -A -o json | kubectl replace -f -") as p:
                self.remote.delete_secret(PROBE_NAMESPACE, PROBE_NAME)  # not counted, and written again later
                self.result.rewritten += self._rewrite(p, everything=True)
                new_key = self._keys()[0]
                self._write([new_key], only=True)
            stage = RETIRED
        if stage == RETIRED:
            with self._step(f"remove {self.old}", f"once no Secret in etcd is under another key than {self.new}") as p:
                # Checked again before the old key leaves the masters; writes again what may have slipped by.
                self.result.rewritten += self._rewrite(p, everything=False)
                self._push_and_wait_loaded(p)
                marker = self._probe(p)
                self._read_back(marker)
                self.remote.delete_secret(PROBE_NAMESPACE, PROBE_NAME)
            record_path(self.pki_dir).unlink(missing_ok=True)
        return self.result

    # --- steps

    @property
    def wanted(self) -> str:
        return f"secretbox:{self.new}"

    def _stage(self) -> str:
        return stage_of(read_config(self.pki_dir), self.plan.rotation, self.source)

    def _keys(self) -> list[dict[str, str]]:
        return _secretbox_keys(read_config(self.pki_dir), self.source)

    def _write(self, keys: Sequence[Mapping[str, str]], only: bool = False) -> None:
        write_config(self.pki_dir, with_secretbox_keys(read_config(self.pki_dir), keys, only=only))

    @contextlib.contextmanager
    def _step(self, name: str, detail: str) -> Iterator[Phase]:
        started = time.monotonic()
        with Phase(self.bus, name, detail) as phase:
            yield phase
        self.result.steps.append(StepTiming(name, time.monotonic() - started))

    def _push_and_wait_loaded(self, phase: Phase) -> None:
        data = config_path(self.pki_dir).read_bytes()
        keys = ", ".join(key_names(parse_config(data, self.source), self.source))
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.remote.push()
        except PlaybookError as exc:
            raise RotationError(exc.what, exc.cause, exc.fix) from None
        for master in self.plan.masters:

            def loaded(master: str = master) -> None:
                hashes = loaded_hashes(self.remote.metrics(master))
                if not runs_config(hashes, data):
                    shown = ", ".join(h[-12:] for h in hashes) or f"no {LOADED_METRIC}"
                    raise _NotYet(f"{master}'s apiserver runs config …{shown}")

            self._wait(
                f"the apiserver on {master} to load the config with keys {keys} (sha256 …{digest[-12:]})", loaded
            )
            phase.progress(f"the apiserver runs the config with keys {keys}", host=master)

    def _probe(self, phase: Phase) -> str:
        """Write the probe Secret until etcd holds it under the new key; the marker it holds."""

        def stored() -> str:
            marker = secrets.token_hex(8)  # a new value each time, so each apply is a write
            self.remote.apply(probe_secret(marker))
            found = stored_under(self.remote.etcd(PROBE_KEY)).get(f"{PROBE_NAMESPACE}/{PROBE_NAME}", "nothing")
            if found != self.wanted:
                raise _NotYet(f"the probe Secret is stored as {found}")
            return marker

        marker = self._wait(f"a Secret written now to be stored under {self.wanted} in etcd", stored)
        phase.progress(f"a Secret written now is stored in etcd as k8s:enc:secretbox:v1:{self.new}:…")
        return marker

    def _read_back(self, marker: str) -> None:
        data = self.remote.get_secret(PROBE_NAMESPACE, PROBE_NAME).get("data") or {}
        if base64.b64decode(data.get("marker", "")).decode(errors="replace") != marker:
            raise RotationError(
                f"Secret {PROBE_NAMESPACE}/{PROBE_NAME}",
                f"does not read back what was written under {self.new}",
                "look at `journalctl -u kube-apiserver` on the master; the rotation resumes when run again",
            )

    def _stale(self) -> dict[str, str]:
        """Secrets etcd holds under anything else than the new key."""
        stored = stored_under(self.remote.etcd(SECRETS_PREFIX, prefix=True))
        return {name: how for name, how in stored.items() if how != self.wanted}

    def _rewrite(self, phase: Phase, everything: bool) -> int:
        """Write Secrets again until etcd holds none under another key; how many were written."""
        written = 0
        stale = None if everything else self._stale()
        for round_ in range(1, REWRITE_ROUNDS + 1):
            if stale is not None and not stale:
                break
            items = [s for s in self.remote.secrets() if stale is None or _secret_name(s) in stale]
            if items:
                out, err = self.remote.replace(items)
                done = replaced_count(out)
                written += done
                retried = f"; {replace_errors(err)}, tried again" if done < len(items) else ""
                phase.progress(f"round {round_}: {done} of {len(items)} Secret(s) written again{retried}")
            stale = self._stale()
        if stale:
            raise RotationError(
                f"Secrets {describe(stale)}",
                f"are still not stored under {self.wanted} after {REWRITE_ROUNDS} rounds of kubectl replace",
                "run `provisioner secrets rotate-key` again (it resumes here); if they stay, `kubectl replace` one "
                f"by hand to see why; {self.old} stays in the config until none is left",
            )
        phase.progress(f"etcd holds every Secret under {self.wanted}")
        return written

    def _wait(self, what: str, probe: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.timeout
        last = "nothing yet"
        while True:
            try:
                return probe()
            except _NotYet as exc:
                last = str(exc)
            except (KubectlError, NodeCommandError) as exc:
                last = exc.message()
            if time.monotonic() >= deadline:
                raise RotationError(
                    f"rotation {self.old} -> {self.new}",
                    f"waited {self.timeout:.0f}s for {what}; last seen: {last}",
                    "look for 'encryption config' in `journalctl -u kube-apiserver` on the masters, then run "
                    "`provisioner secrets rotate-key` again: it resumes at this step",
                )
            time.sleep(self.interval)


def _secret_name(item: Mapping[str, Any]) -> str:
    meta = item.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


# --- the real cluster ----------------------------------------------------------------------------------


def push_config(
    state: State, bus: EventBus, prefix: Sequence[str] = (), host_key_checking: bool = False
) -> runner.RunResult:
    """Install the PKI directory's encryption config on every master: site.yml's play for it, alone."""
    return runner.run_playbook(
        state,
        bus,
        prefix=prefix,
        limit=inventory.GROUPS["master"],
        tags=PUSH_TAG,
        host_key_checking=host_key_checking,
        name="rotate-key",
        rerun="provisioner secrets rotate-key",
    )


class LiveCluster:
    """The cluster `up` built: Ansible installs the file, SSH reaches each master, kubectl the API."""

    def __init__(self, cluster: Cluster, state: State, bus: EventBus) -> None:
        if not all(p.is_file() for p in (state.inventory_file, state.hosts_file, state.kubeconfig)):
            raise ProvisionerError(
                f"cluster {cluster.name}",
                f"has no generated inventory, host list or admin kubeconfig under {state.root}",
                "bring it up first with `provisioner up`",
            )
        kubectl_bin = artifact_set(cluster).bin / "kubectl"
        if not kubectl_bin.is_file():
            raise ToolMissing(str(kubectl_bin), "kubectl of the artifact set is missing", "run `provisioner artifacts`")
        self.state, self.bus = state, bus
        self.static = isinstance(cluster.spec.provider, StaticProvider)
        self.ssh = providers.node_ssh(cluster, state, bus)
        self.prefix = self.ssh.prefix
        self.kubectl = Kubectl(kubectl_bin, state.kubeconfig, self.prefix)
        self.etcd_host = cluster.masters[0].name

    def push(self) -> None:
        push_config(self.state, self.bus, self.prefix, self.static)

    def metrics(self, master: str) -> str:
        # The master's own apiserver over loopback, and only the encryption config's lines: /metrics is megabytes.
        script = (
            f"m=$(kubectl --kubeconfig={layout.ADMIN_CONF} get --raw /metrics) || exit 1; "
            f"printf '%s\\n' \"$m\" | grep '^{LOADED_METRIC}' || true"
        )
        return self.ssh.run(master, script, timeout=90).stdout.decode(errors="replace")

    def etcd(self, key: str, prefix: bool = False) -> bytes:
        return self.ssh.run(self.etcd_host, etcdctl_get(key, prefix), timeout=120).stdout

    def apply(self, doc: Mapping[str, Any]) -> None:
        self.kubectl.apply([dict(doc)])

    def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.kubectl.json("get", "secret", name, f"--namespace={namespace}")
        return found

    def secrets(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kubectl.json("get", "secrets", "--all-namespaces", timeout=300)["items"]
        return items

    def replace(self, items: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
        listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})
        done = self.kubectl.run("replace", "-f", "-", input=listed, check=False, timeout=600)
        return done.stdout, done.stderr

    def delete_secret(self, namespace: str, name: str) -> None:
        self.kubectl.run("delete", "secret", name, f"--namespace={namespace}", "--ignore-not-found")
