#!/usr/bin/env bash
# System packages the lake needs beyond pip: JDBC drivers for local Spark's Iceberg JDBC catalog
# (SQLite locally, PostgreSQL in production) and a PostgreSQL server for the ledger tests.
# Idempotent; skips what is already there.
set -euo pipefail
need=()
[ -f /usr/share/java/sqlite-jdbc.jar ] || need+=(libxerial-sqlite-jdbc-java libxerial-sqlite-jdbc-jni)
[ -f /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
# A real PostgreSQL server for the ledger tests (production keeps the ledger in PostgreSQL).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
  echo "system deps: already installed"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system deps: please install ${need[*]} (needs root and apt-get); Spark tests will be skipped without them" >&2
  exit 0
fi
echo "system deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${need[@]}" >/dev/null
