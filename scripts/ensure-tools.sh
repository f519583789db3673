#!/usr/bin/env bash
# Installs the test tools that npm does not: kosoku (PyPI), which runs Autobahn|Testsuite's
# RFC 6455 cases without Docker. Idempotent; called by `npm test`.
set -euo pipefail
if ! command -v kosoku >/dev/null 2>&1; then
  echo "installing kosoku (Autobahn|Testsuite runner) from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check kosoku==0.1.0
fi
