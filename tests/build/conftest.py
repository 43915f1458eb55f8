"""Shared fixture of the build tier: the default version's real artifact set (a no-op on a warm cache)."""

from __future__ import annotations

import pytest

from provisioner.artifacts import build
from provisioner.artifacts.layout import ArtifactSet
from provisioner.events import EventBus
from provisioner.paths import cache_root
from provisioner.versions import DEFAULT_KUBERNETES


@pytest.fixture(scope="module")
def built() -> ArtifactSet:
    aset = ArtifactSet(cache_root() / "artifacts" / DEFAULT_KUBERNETES, DEFAULT_KUBERNETES)
    build.build(aset, EventBus())
    return aset
