"""The cluster checks in the order verify runs them, and the cleanup row (hostchecks.py runs the host checks).

Each module of checks exposes its ``GROUP``, an ordered list of :class:`ClusterCheck`; adding a module to
verify is one line in ``GROUPS`` (plus its import).
"""

from __future__ import annotations

from provisioner.verify import cluster, ha, security, selfheal
from provisioner.verify.lab import ClusterCheck, check_cleanup

# Self-healing last: its kills and shutdown disturb the cluster, the shutdown (the longest) near the end;
# then the masters' machines lost (rows that skip unless there are three masters).
GROUPS: list[list[ClusterCheck]] = [
    cluster.GROUP,
    security.GROUP,
    selfheal.GROUP,
    ha.GROUP,
]

CHECKS: list[ClusterCheck] = [check for group in GROUPS for check in group]

CLEANUP = ClusterCheck("cleanup", "every scratch namespace the checks made is deleted again", check_cleanup)
