"""Wrapper Go modules: how to build a program whose own go.mod cannot be used from outside.

`go install module/cmd/x@v` refuses modules with replace or exclude directives (Kubernetes, etcd,
containerd...). A wrapper module requires the target at its version and carries over the target's
directives: replacements pointing into the target's own repository (`./staging/...`, `../api`)
become requirements of that sibling module's published version; other replacements and excludes are
copied as they are. The main module's go.mod then rules the build exactly as upstream's does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_DIRECTIVE = re.compile(r"^(replace|exclude|godebug)\s*\(\s*$")
_SINGLE = re.compile(r"^(replace|exclude|godebug)\s+(.+)$")
_GO = re.compile(r"^go\s+(\d+\.\d+(?:\.\d+)?)\s*$", re.MULTILINE)


@dataclass
class GoMod:
    go: str = "1.21"
    replaces: list[tuple[str, str]] = field(default_factory=list)  # (left side, right side)
    excludes: list[str] = field(default_factory=list)
    godebug: list[str] = field(default_factory=list)


def parse(text: str) -> GoMod:
    """The parts of a go.mod a wrapper needs: go version, replace, exclude and godebug lines."""
    mod = GoMod()
    if m := _GO.search(text):
        mod.go = m.group(1)
    block: str | None = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block:
            if line == ")":
                block = None
            else:
                _add(mod, block, line)
        elif m := _DIRECTIVE.match(line):
            block = m.group(1)
        elif m := _SINGLE.match(line):
            _add(mod, m.group(1), m.group(2).strip())
    return mod


def _add(mod: GoMod, kind: str, body: str) -> None:
    if kind == "replace":
        left, _, right = body.partition("=>")
        mod.replaces.append((left.strip(), right.strip()))
    elif kind == "exclude":
        mod.excludes.append(body)
    else:
        mod.godebug.append(body)


def is_local(target: str) -> bool:
    return target.startswith(("./", "../", "/"))


def local_siblings(mod: GoMod) -> list[str]:
    """Modules the target replaces with a directory of its own repository (e.g. k8s.io/api)."""
    out = []
    for left, right in mod.replaces:
        if is_local(right) and "FORBIDDEN_DEPENDENCY" not in right:
            out.append(left.split()[0])
    return out


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def render(
    name: str,
    requires: dict[str, str],
    upstream: Iterable[GoMod],
    sibling_version: Callable[[str], str],
) -> str:
    """The wrapper's go.mod text.

    `sibling_version(module)` gives the published version of a module the upstream go.mod replaces
    with a local directory (Kubernetes staging: v0.MINOR.PATCH; etcd: the same v3 tag).
    Replacements that only forbid a dependency (etcd's ./FORBIDDEN_DEPENDENCY) are dropped: they
    guard upstream's own tree and have no published module to point at.
    """
    mods = list(upstream)
    go = max((m.go for m in mods), key=_version_key, default="1.21")
    replaces: dict[str, str] = {}
    excludes: list[str] = []
    godebug: list[str] = []
    for mod in mods:
        for left, right in mod.replaces:
            module = left.split()[0]
            if is_local(right):
                # A sibling the wrapper itself requires at that very version needs no replacement (etcdutl's
                # go.mod replaces the server the wrapper requires): the line would only change the build info.
                if "FORBIDDEN_DEPENDENCY" in right or requires.get(module) == sibling_version(module):
                    continue
                replaces[module] = f"{module} {sibling_version(module)}"
            else:
                replaces[left] = right
        excludes += [e for e in mod.excludes if e not in excludes]
        godebug += [g for g in mod.godebug if g not in godebug]
    lines = [f"module {name}", "", f"go {go}", ""]
    if godebug:
        lines += ["godebug (", *(f"\t{g}" for g in godebug), ")", ""]
    lines += ["require (", *(f"\t{m} {v}" for m, v in sorted(requires.items())), ")", ""]
    if replaces:
        lines += ["replace (", *(f"\t{left} => {right}" for left, right in sorted(replaces.items())), ")", ""]
    if excludes:
        lines += ["exclude (", *(f"\t{e}" for e in excludes), ")", ""]
    return "\n".join(lines)


def kubernetes_staging_version(kubernetes: str) -> Callable[[str], str]:
    """Kubernetes vX.Y.Z publishes its staging modules (k8s.io/api, ...) as v0.Y.Z."""
    _, minor, patch = kubernetes.lstrip("v").split(".")
    return lambda _module: f"v0.{minor}.{patch}"


def same_version(version: str) -> Callable[[str], str]:
    return lambda _module: version
