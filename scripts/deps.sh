#!/usr/bin/env bash
# Installs everything the admin machine needs, idempotently: Debian packages, a Go toolchain new enough
# to build Kubernetes, and the project's virtual environment (.venv). Quiet when all is in place.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

say() { printf '[deps] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------------
mapfile -t wanted < <(grep -Ev '^\s*(#|$)' scripts/apt-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Go toolchain ----------------------------------------------------------------------------------
# Kubernetes 1.37 needs Go >= 1.25. If the machine has none that new, fetch the official toolchain as a
# Go module (golang.org/toolchain) through the module proxy, which works offline-from-internet too.
go_min_minor=25
go_toolchain="v0.0.1-go1.26.8.linux-amd64"
find_go() {
    for g in "${GO:-}" "$(command -v go || true)" /usr/local/go/bin/go; do
        [ -n "$g" ] && [ -x "$g" ] || continue
        minor=$("$g" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
        [ -n "$minor" ] && [ "$minor" -ge "$go_min_minor" ] && { echo "$g"; return 0; }
    done
    return 1
}
if ! go_bin=$(find_go); then
    say "no Go >= 1.$go_min_minor found; fetching golang.org/toolchain@$go_toolchain through the module proxy"
    dpkg-query -W golang-go >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
    dir=$(GOFLAGS=-mod=mod /usr/bin/go mod download -json "golang.org/toolchain@$go_toolchain" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    go_bin="$dir/bin/go"
    chmod +x "$dir/bin/"* "$dir/pkg/tool/"*/* 2>/dev/null || true
fi
mkdir -p "$here/.venv"
echo "$go_bin" > "$here/.venv/go-path"

# --- Python virtual environment ----------------------------------------------------------------------
stamp="$here/.venv/.deps-stamp"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x "$here/.venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating the virtual environment in .venv (pip install -e '.[dev]')"
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q --upgrade pip
    "$here/.venv/bin/pip" install -q -e ".[dev]"
    echo "$want" > "$stamp"
fi
