"""The specs the fast tests build from: the default lab (one master) and the HA lab (three masters).

Imported by name, as localnode is.
"""

from __future__ import annotations

from provisioner import paths, spec

HA_SPEC = paths.REPO_ROOT / "inventories" / "ha" / "cluster.yaml"


def default() -> spec.Cluster:
    return spec.load(paths.default_spec())


def ha() -> spec.Cluster:
    return spec.load(HA_SPEC)
