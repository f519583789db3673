#!/usr/bin/env bash
# Installs the test tools that npm does not:
# - kosoku (PyPI), which runs Autobahn|Testsuite's RFC 6455 cases without Docker;
# - chromium (Debian package), the headless browser __test__/browser.test.js drives through
#   playwright-core.
# Idempotent; called by `npm test`.
set -euo pipefail
if ! command -v kosoku >/dev/null 2>&1; then
  echo "installing kosoku (Autobahn|Testsuite runner) from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check kosoku==0.1.0
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=""
  elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
  else
    echo "ensure-tools: the Debian package 'chromium' is needed by __test__/browser.test.js," >&2
    echo "but this user is not root and sudo is not available. Install it as root:" >&2
    echo "  apt-get update && apt-get install -y chromium" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tools: 'chromium' is missing and apt-get is not available to install it" >&2
    echo "(this script expects Debian); install Chromium so that 'chromium' is on PATH." >&2
    exit 1
  fi
  echo "installing chromium (headless browser for __test__/browser.test.js) with apt-get" >&2
  $as_root apt-get update
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
