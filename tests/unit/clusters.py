"""The specs the fast tests build from: the default lab (one master) and the HA lab (three masters).

Imported by name, as localnode is.
"""

from __future__ import annotations

import pytest

from provisioner import paths, spec

HA_SPEC = paths.REPO_ROOT / "inventories" / "ha" / "cluster.yaml"


def default() -> spec.Cluster:
    return spec.load(paths.default_spec())


def ha() -> spec.Cluster:
    # The validator refuses three masters until the whole stacked control plane is in (its own commit).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spec, "SUPPORTED_MASTER_COUNTS", (1, 3))
        return spec.load(HA_SPEC)
