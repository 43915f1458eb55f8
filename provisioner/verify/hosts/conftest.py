"""Shared fixtures for the testinfra modules that `provisioner verify` runs against the cluster's nodes.

pytest runs these modules in a child process (under the lab's network namespace prefix) with
``--ansible-inventory`` pointing at the generated inventory; hosts come from its groups. What the
cluster should look like (versions, addresses, expected certificate names) arrives as a JSON file
written by provisioner/verify/hostchecks.py, so the modules never parse the spec themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from provisioner.verify.hosts.helpers import FACTS_ENV, node_name


@pytest.fixture(scope="session")
def facts() -> dict[str, Any]:
    path = os.environ.get(FACTS_ENV)
    if not path:
        pytest.exit(f"{FACTS_ENV} is not set; run these checks through `provisioner verify`", returncode=4)
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


@pytest.fixture(autouse=True)
def _describe(request: pytest.FixtureRequest, record_property: Any) -> None:
    """Give every test case a readable check name and its expectation (the docstring) in the JUnit report."""
    callspec = getattr(request.node, "callspec", None)
    params = {k: v for k, v in (callspec.params if callspec else {}).items() if k != "_testinfra_host"}
    where = ""
    if "host" in request.fixturenames:
        where = f" @{node_name(request.getfixturevalue('host'))}"
    doc = (request.function.__doc__ or "").strip().splitlines()
    expectation = doc[0].format(**params) if doc else ""
    group = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    what = request.function.__name__.removeprefix("test_").replace("_", " ")
    args = f" {' '.join(str(v) for v in params.values())}" if params else ""
    record_property("check", f"{group}: {what}{args}{where}")
    record_property("expectation", expectation)
