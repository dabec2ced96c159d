#!/bin/sh
# Install Debian's headless-capable `chromium` for tests/test_report.py (the HTML report is opened in it).
# Idempotent: does nothing when a chromium binary is already on PATH (or $CHROMIUM points at one).
# Needs root (or passwordless sudo) for apt-get; without it, prints what to run and exits 0 so that the rest of
# the test suite still runs (test_report.py then fails its browser test with the same hint, it is not skipped).
set -eu

if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then
    exit 0
fi
for b in chromium chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then
        exit 0
    fi
done

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_chromium.sh: chromium is not installed and this user cannot apt-get install it;" >&2
    echo "  run as root: apt-get update && apt-get install -y --no-install-recommends chromium" >&2
    exit 0
fi

echo "install_chromium.sh: installing Debian's chromium (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null 2>&1
echo "install_chromium.sh: $(chromium --version 2>/dev/null || echo chromium installed)" >&2
