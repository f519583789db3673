#!/usr/bin/env bash
# Installs the test tools that npm does not:
# - kosoku (PyPI), which runs Autobahn|Testsuite's RFC 6455 cases without Docker;
# - chromium (Debian package), the headless browser __test__/browser.test.js drives through
#   playwright-core;
# - redis-server (Debian package, Redis >= 7 for sharded pub/sub), which __test__/cluster.test.js
#   starts on free ports (standalone servers and a 3-node Redis Cluster, with redis-cli);
# - prometheus (Debian package), for its promtool: __test__/prometheus.test.js checks the
#   collector's exposition (`promtool check metrics`) and examples/prometheus/alerts.yml
#   (`promtool check rules`, `promtool test rules`). The Prometheus server itself is not started.
# - openssl (Debian package), whose CLI makes the throwaway CA and certificates of
#   __test__/tls.test.js at test time.
# Debian packages are installed with apt-get as root (or through sudo), after one shared
# `apt-get update`. Idempotent; called by `npm test`.
set -euo pipefail
if ! command -v kosoku >/dev/null 2>&1; then
  echo "installing kosoku (Autobahn|Testsuite runner) from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check kosoku==0.1.0
fi

# Debian packages missing from PATH (one `apt-get update` serves them all).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=("chromium")
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  missing+=("redis-server")
fi
command -v promtool >/dev/null 2>&1 || missing+=("prometheus")
command -v openssl >/dev/null 2>&1 || missing+=("openssl")

if [ "${#missing[@]}" -gt 0 ]; then
  need="the Debian package(s) ${missing[*]} (chromium: __test__/browser.test.js and dashboard.test.js; redis-server: __test__/cluster.test.js; prometheus: promtool for __test__/prometheus.test.js; openssl: __test__/tls.test.js)"
  if [ "$(id -u)" -eq 0 ]; then
    as_root=""
  elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
  else
    echo "ensure-tools: $need are needed," >&2
    echo "but this user is not root and sudo is not available. Install them as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tools: $need are missing and apt-get is not available to install them" >&2
    echo "(this script expects Debian); install them so that ${missing[*]/redis-server/redis-server and redis-cli} are on PATH." >&2
    exit 1
  fi
  echo "installing ${missing[*]} with apt-get" >&2
  $as_root apt-get update
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
