#!/usr/bin/python3
"""Ansible module: download the files a node lacks from the artifact server, each checked against its sha256.

The lab's nodes fetch binaries and image archives over HTTP from the server `up` runs in the lab
namespace (provisioner/artifacts/serve.py). get_url would cost one module start per file and hash each
download three times (sha256 to verify it, then sha1 and md5 for its result) with hashlib, which runs
at a few MB/s under emulation. This module takes every file at once: it streams each missing one into
a temporary file beside its destination, hashes them all with one `sha256sum` run, and only when every
sum matches the manifest's does it set mode and owner and rename them into place. On any failure the
temporary files are removed and nothing installed is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: fetch_artifacts
short_description: download files from the artifact server, verified by sha256, in one call
options:
  base_url:
    description: The artifact server, e.g. http://192.168.121.1:40123; a file's URL is base_url/src.
    type: str
    required: true
  files:
    description: "[src, dest, mode] triples: src is the artifact set's name (bin/kubelet)."
    type: list
    elements: list
    required: true
  checksums:
    description: src -> sha256, the artifact manifest.
    type: dict
    required: true
  installed:
    description: dest -> sha256 of what is installed now (null if missing); equal sums are not fetched.
    type: dict
    default: {}
  timeout:
    description: Seconds to wait for the server to answer or send.
    type: int
    default: 120
"""


def sha256sum(paths: list[str]) -> dict[str, str]:
    """One `sha256sum` for all files: under emulation it runs ~3x faster than hashlib here."""
    if not paths:
        return {}
    out = subprocess.run(["sha256sum", "--", *paths], check=True, capture_output=True, text=True).stdout
    return {line[66:]: line[:64] for line in out.splitlines()}


def download(url: str, path: str, timeout: int) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as answer, open(path, "wb") as out:
        shutil.copyfileobj(answer, out, 1 << 20)
        return out.tell()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "base_url": {"type": "str", "required": True},
            "files": {"type": "list", "elements": "list", "required": True},
            "checksums": {"type": "dict", "required": True},
            "installed": {"type": "dict", "default": {}},
            "timeout": {"type": "int", "default": 120},
        },
        supports_check_mode=True,
    )
    base = module.params["base_url"].rstrip("/")
    checksums, installed = module.params["checksums"], module.params["installed"]
    wanted = [(src, dest, mode) for src, dest, mode in module.params["files"] if installed.get(dest) != checksums[src]]
    if not wanted or module.check_mode:
        module.exit_json(changed=bool(wanted), fetched=[dest for _, dest, _ in wanted])

    started = time.monotonic()
    temporary: dict[str, str] = {}  # dest -> its temporary file
    size = 0
    try:
        for src, dest, _ in wanted:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            temporary[dest] = f"{os.path.dirname(dest)}/.{os.path.basename(dest)}.fetching"
            try:
                size += download(f"{base}/{src}", temporary[dest], module.params["timeout"])
            except (urllib.error.URLError, OSError) as exc:
                module.fail_json(
                    msg=f"{src}: cannot download {base}/{src}: {getattr(exc, 'reason', exc)}. "
                    "The artifact server runs only while `provisioner up` (or `scale`) runs: re-run it"
                )
        sums = sha256sum(list(temporary.values()))
        for src, dest, _ in wanted:
            if sums[temporary[dest]] != checksums[src]:
                module.fail_json(
                    msg=f"{src}: downloaded from {base}/{src} with sha256 {sums[temporary[dest]]}, "
                    f"but the manifest says {checksums[src]}. Nothing was installed; check the artifact set "
                    "with `provisioner artifacts verify`, then re-run"
                )
        for _, dest, mode in wanted:
            os.chmod(temporary[dest], int(mode, 8))
            os.chown(temporary[dest], 0, 0)
            os.replace(temporary[dest], dest)  # same directory: atomic, a running binary is not disturbed
            del temporary[dest]
    finally:
        for path in temporary.values():
            if os.path.exists(path):
                os.unlink(path)
    result: dict[str, Any] = {
        "changed": True,
        "fetched": [dest for _, dest, _ in wanted],
        "bytes": size,
        "seconds": round(time.monotonic() - started, 1),
    }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
