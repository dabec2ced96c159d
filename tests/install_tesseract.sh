#!/bin/sh
# Install Debian's `tesseract-ocr` (5.x with its English model) for the USPTO importer's figure-label OCR
# (shards/uspto/labels.py; tests/test_uspto.py, tests/test_uspto_sample.py).
# Idempotent: does nothing when a tesseract binary is already on PATH (or $PATENTCLIP_TESSERACT points at one).
# Needs root (or passwordless sudo) for apt-get; without it, prints what to run and exits 0 so that the rest of
# the test suite still runs (the USPTO tests then fail with the same hint; they are not skipped).
set -eu

if [ -n "${PATENTCLIP_TESSERACT:-}" ] && [ -x "${PATENTCLIP_TESSERACT}" ]; then
    exit 0
fi
if command -v tesseract >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_tesseract.sh: tesseract is not installed and this user cannot apt-get install it;" >&2
    echo "  run as root: apt-get update && apt-get install -y --no-install-recommends tesseract-ocr" >&2
    exit 0
fi

echo "install_tesseract.sh: installing Debian's tesseract-ocr (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends tesseract-ocr >/dev/null
command -v tesseract >/dev/null 2>&1
echo "install_tesseract.sh: $(tesseract --version 2>/dev/null | head -1 || echo tesseract installed)" >&2
