"""Drift as a user sees it: a change made by command is reported field by field; defaults never are.

The live objects are recorded `kubectl get -o json` answers (tests/unit/data/drift-live-*.json),
served by a stand-in for kubectl that answers like `kubectl get -f - -o json --ignore-not-found`.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.drift import ABSENT, REDACTED, Difference, DriftError, diff_object, drift, load_manifests, quantity

DATA = Path(__file__).parent / "data"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: registry.k8s.io/e2e-test-images/agnhost:2.66.1
          imagePullPolicy: Never
          args: [netexec, --http-port=8080]
          ports:
            - containerPort: 8080
              name: http
          resources:
            limits: {cpu: "0.5", memory: 128Mi}
            requests: {cpu: 100m, memory: 64Mi}
          env:
            - {name: DEBUG, value: "true"}
            - {name: MODE, value: prod}
        - name: sidecar
          image: registry.k8s.io/e2e-test-images/agnhost:2.66.1
          args: [pause]
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
    - name: http
      port: 80
      targetPort: 8080
"""

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: shop
stringData:
  user: app
  password: hunter2
"""


def live(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"drift-live-{name}.json").read_text())
    return data


class RecordedKubectl:
    """Answers `get -f -` from recorded objects keyed by (kind, namespace, name)."""

    def __init__(self, objects: list[dict[str, Any]], fail: str = "") -> None:
        self.objects = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}
        self.fail = fail
        self.calls: list[tuple[str, ...]] = []

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        assert args[:3] == ("get", "-f", "-") and "--ignore-not-found" in args
        if self.fail:
            return subprocess.CompletedProcess(args, 1, "", self.fail)
        wanted = yaml.safe_load(input or "")
        meta = wanted["metadata"]
        found = self.objects.get((wanted["kind"], meta.get("namespace", "default"), meta["name"]))
        return subprocess.CompletedProcess(args, 0, json.dumps(found) if found else "", "")


def manifests(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_defaults_filled_in_by_the_api_are_not_drift() -> None:
    desired = yaml.safe_load(DEPLOYMENT)
    recorded = live("deployment")
    recorded["spec"]["replicas"] = 3
    assert diff_object(desired, recorded) == []


def test_kubectl_scale_is_reported_with_file_and_live_value(tmp_path: Path) -> None:
    # The recorded Deployment has 5 replicas: someone ran `kubectl scale --replicas=5`.
    kubectl = RecordedKubectl([live("deployment"), live("service"), live("secret")])
    found = drift(manifests(tmp_path, **{"web.yaml": DEPLOYMENT + "---\n" + SERVICE}), kubectl)
    assert [(d.object, d.path, d.desired, d.live) for d in found] == [("Deployment shop/web", "spec.replicas", 3, 5)]
    assert found[0].line() == "Deployment shop/web: spec.replicas: 3 (file) → 5 (live)"


def test_a_changed_image_is_named_by_its_container(tmp_path: Path) -> None:
    recorded = live("deployment")
    recorded["spec"]["replicas"] = 3
    recorded["spec"]["template"]["spec"]["containers"][1]["image"] = "registry.k8s.io/e2e-test-images/agnhost:2.40"
    found = drift(manifests(tmp_path, **{"web.yaml": DEPLOYMENT}), RecordedKubectl([recorded]))
    assert [d.path for d in found] == ["spec.template.spec.containers[name=sidecar].image"]
    assert found[0].live == "registry.k8s.io/e2e-test-images/agnhost:2.40"


def test_env_order_and_quantity_spelling_do_not_count_but_values_do() -> None:
    desired = yaml.safe_load(DEPLOYMENT)
    recorded = live("deployment")
    recorded["spec"]["replicas"] = 3
    assert diff_object(desired, recorded) == []  # env listed in another order, cpu "0.5" vs "500m"
    recorded["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "256Mi"
    recorded["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "staging"
    assert diff_object(desired, recorded) == [
        ("spec.template.spec.containers[name=web].resources.limits.memory", "128Mi", "256Mi"),
        ("spec.template.spec.containers[name=web].env[name=MODE].value", "prod", "staging"),
    ]


def test_removed_label_and_container_are_reported_as_absent() -> None:
    desired = yaml.safe_load(DEPLOYMENT)
    recorded = live("deployment")
    recorded["spec"]["replicas"] = 3
    del recorded["metadata"]["labels"]["app"]
    recorded["spec"]["template"]["spec"]["containers"].pop()
    found = diff_object(desired, recorded)
    assert [(p, live is ABSENT) for p, _, live in found] == [
        ("metadata.labels.app", True),
        ("spec.template.spec.containers[name=sidecar]", True),
    ]


def test_a_missing_object_is_drift(tmp_path: Path) -> None:
    found = drift(manifests(tmp_path, **{"svc.yaml": SERVICE}), RecordedKubectl([]))
    assert len(found) == 1 and found[0].path == "" and found[0].live is ABSENT
    assert found[0].line() == "Service shop/web: missing from the cluster (defined in svc.yaml)"


def test_secret_values_are_compared_but_never_shown(tmp_path: Path) -> None:
    kubectl = RecordedKubectl([live("secret")])
    assert drift(manifests(tmp_path, **{"secret.yaml": SECRET}), kubectl) == []
    changed = SECRET.replace("hunter2", "correct-horse")
    found = drift(manifests(tmp_path, **{"secret.yaml": changed}), kubectl)
    assert [(d.path, d.desired, d.live) for d in found] == [("data.password", REDACTED, REDACTED)]
    assert "correct-horse" not in found[0].line() and "hunter2" not in found[0].line()


def _printed(found: list[Difference]) -> str:
    """Everything `provisioner drift` can print for these differences: its text lines and its JSON."""
    return "\n".join(d.line() for d in found) + "\n" + json.dumps([d.to_dict() for d in found])


def test_a_missing_secret_is_reported_without_its_values(tmp_path: Path) -> None:
    with_data = SECRET + "data:\n  token: " + base64.b64encode(b"s3cr3t-token").decode() + "\n"
    found = drift(manifests(tmp_path, **{"secret.yaml": with_data}), RecordedKubectl([]))
    assert [(d.object, d.path, d.live) for d in found] == [("Secret shop/db", "", ABSENT)]
    printed = _printed(found)
    for value in ("hunter2", "app", "s3cr3t-token"):
        assert value not in printed and base64.b64encode(value.encode()).decode() not in printed
    # Which keys the file defines is no secret, and says what is missing.
    assert found[0].to_dict()["desired"]["stringData"] == {"user": REDACTED, "password": REDACTED}
    assert found[0].to_dict()["desired"]["metadata"] == {"name": "db", "namespace": "shop"}


def test_a_secret_without_data_in_the_cluster_shows_keys_but_not_values(tmp_path: Path) -> None:
    recorded = live("secret")
    del recorded["data"]
    found = drift(manifests(tmp_path, **{"secret.yaml": SECRET}), RecordedKubectl([recorded]))
    assert [(d.path, d.desired, d.live) for d in found] == [("data", {"user": REDACTED, "password": REDACTED}, ABSENT)]
    assert "hunter2" not in _printed(found) and base64.b64encode(b"hunter2").decode() not in _printed(found)


def test_service_port_given_as_string_matches_number() -> None:
    desired = yaml.safe_load(SERVICE.replace("targetPort: 8080", 'targetPort: "8080"'))
    assert diff_object(desired, live("service")) == []
    desired["spec"]["ports"][0]["port"] = 81
    assert diff_object(desired, live("service")) == [("spec.ports[name=http].port", 81, 80)]


def test_manifests_are_read_recursively_with_lists_and_multiple_documents(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "web.yml").write_text(DEPLOYMENT + "---\n" + SERVICE)
    as_list = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(SECRET)]}
    (tmp_path / "secrets.json").write_text(json.dumps(as_list))
    (tmp_path / "README.md").write_text("not a manifest")
    objects = load_manifests(tmp_path)
    assert [(f, o["kind"]) for f, o in objects] == [
        ("apps/web.yml", "Deployment"),
        ("apps/web.yml", "Service"),
        ("secrets.json", "Secret"),
    ]


@pytest.mark.parametrize(
    "setup, cause",
    [
        (lambda p: p / "nope", "is not a folder"),
        (lambda p: p, "holds no Kubernetes objects"),
        (lambda p: manifests(p, **{"bad.yaml": "kind: [unclosed"}), "is not valid YAML"),
        (lambda p: manifests(p, **{"x.yaml": "kind: ConfigMap\nmetadata: {}\n"}), "without kind or metadata.name"),
    ],
)
def test_unreadable_manifests_are_an_error_not_drift(tmp_path: Path, setup: Any, cause: str) -> None:
    with pytest.raises(DriftError) as err:
        load_manifests(setup(tmp_path))
    assert cause in err.value.message()
    assert err.value.exit_code == 2


def test_kubectl_failure_is_an_error_naming_the_object(tmp_path: Path) -> None:
    kubectl = RecordedKubectl([], fail='error: the server doesn\'t have a resource type "widgets"')
    with pytest.raises(DriftError) as err:
        drift(manifests(tmp_path, **{"svc.yaml": SERVICE}), kubectl)
    assert "Service web in svc.yaml" in err.value.message() and "widgets" in err.value.message()


def test_desired_object_is_not_modified() -> None:
    desired = yaml.safe_load(SECRET)
    before = copy.deepcopy(desired)
    diff_object(desired, live("secret"))
    assert desired == before


@pytest.mark.parametrize(
    "a, b, same", [("0.5", "500m", True), ("1Gi", "1024Mi", True), (2, "2000m", True), ("1Gi", "1G", False)]
)
def test_quantities(a: Any, b: Any, same: bool) -> None:
    assert (quantity(a) == quantity(b)) is same
