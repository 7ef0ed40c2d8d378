#!/usr/bin/env bash
# Start a local PostgreSQL (Debian package) for the tracking-server test; print the URI to use.
# Idempotent. Exits non-zero with a reason if PostgreSQL cannot be installed or started.
# Only the URI goes to stdout: every tool's output goes to stderr (`setup >&2`), and the server
# started here never holds the caller's stdout (bash saves it close-on-exec), so `$(...)` returns.
set -euo pipefail

setup() {
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "installing postgresql (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  fi
  local version
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
  fi
  pg_ctlcluster "$version" main start 2>/dev/null || true
  for _ in $(seq 1 30); do
    runuser -u postgres -- pg_isready -q -h 127.0.0.1 && break
    sleep 1
  done
  runuser -u postgres -- psql -q -tc "SELECT 1 FROM pg_roles WHERE rolname='tuneship'" |
    grep -q 1 || runuser -u postgres -- psql -q -c "CREATE ROLE tuneship LOGIN PASSWORD 'tuneship'"
  runuser -u postgres -- psql -q -tc "SELECT 1 FROM pg_database WHERE datname='mlflow_ci'" |
    grep -q 1 || runuser -u postgres -- createdb -O tuneship mlflow_ci
}

setup >&2
echo "postgresql://tuneship:tuneship@127.0.0.1:5432/mlflow_ci"
