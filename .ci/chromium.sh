#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium (and a font, so plotly's text renders) when missing.
# Called by .ci/run before the tests; tests/test_reports.py opens the generated report in it.
# Idempotent: does nothing when /usr/bin/chromium already works. Needs root (or sudo) and apt-get.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1; then
    echo "chromium.sh: $("$CHROMIUM" --version 2>/dev/null) already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: apt-get not found; install Chromium by hand (expected at $CHROMIUM)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "chromium.sh: need root (or sudo) to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# A fresh container has no package lists; retry once because mirrors sometimes hiccup.
$SUDO apt-get update -qq || { sleep 5; $SUDO apt-get update -qq; }
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null \
    || { sleep 5; $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

if ! "$CHROMIUM" --version >/dev/null 2>&1; then
    echo "chromium.sh: $CHROMIUM did not install or does not run" >&2
    exit 1
fi
echo "chromium.sh: installed $("$CHROMIUM" --version 2>/dev/null)"
