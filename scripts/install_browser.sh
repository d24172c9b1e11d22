#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser tests (tests/test_browser_workflows.py).
# Playwright drives this system browser: its own browser download is not reachable offline.
# Idempotent: does nothing when both are installed; installing needs root or passwordless sudo.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        echo "install_browser.sh: chromium is missing and neither root nor passwordless sudo is available;" >&2
        echo "install it with: apt-get install chromium chromium-driver" >&2
        exit 1
    fi
}

export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
echo "install_browser.sh: installed $(chromium --version 2>/dev/null)"
