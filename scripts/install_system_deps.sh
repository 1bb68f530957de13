#!/usr/bin/env bash
# System packages the lake needs beyond pip: JDBC drivers for local Spark's Iceberg JDBC catalog
# (SQLite locally, PostgreSQL in production) and a PostgreSQL server for the ledger tests.
# Idempotent; skips what is already there (LAKE_SYSTEM_DEPS_FORCE=1: install them all anyway).
# Waits up to LAKE_APT_LOCK_TIMEOUT seconds (600) for another apt or dpkg that holds its lock.
set -euo pipefail
force="${LAKE_SYSTEM_DEPS_FORCE:-0}"
need=()
[ "$force" = 1 ] || [ ! -f /usr/share/java/sqlite-jdbc.jar ] && need+=(libxerial-sqlite-jdbc-java libxerial-sqlite-jdbc-jni)
[ "$force" = 1 ] || [ ! -f /usr/share/java/postgresql.jar ] && need+=(libpostgresql-jdbc-java)
[ "$force" = 1 ] || ! command -v java >/dev/null 2>&1 && need+=(default-jre-headless)
# A real PostgreSQL server for the ledger tests (production keeps the ledger in PostgreSQL).
[ "$force" = 1 ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
  echo "system deps: already installed"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system deps: please install ${need[*]} (needs root and apt-get); Spark tests will be skipped without them" >&2
  exit 0
fi
LOCK_WAIT="${LAKE_APT_LOCK_TIMEOUT:-600}"

# `update` takes the package lists' lock, which DPkg::Lock::Timeout does not cover (apt 2.6 fails at
# once when unattended-upgrades holds it): retry while the lock is what stops it.
apt_update() {
  local deadline=$((SECONDS + LOCK_WAIT)) out
  while true; do
    if out=$(apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT" update -qq 2>&1); then
      return 0
    fi
    if ! grep -q "Could not get lock" <<<"$out" || [ "$SECONDS" -ge "$deadline" ]; then
      echo "$out" >&2
      return 1
    fi
    echo "system deps: another apt holds the package lists' lock; waiting" >&2
    sleep "${LAKE_APT_RETRY_SECONDS:-3}"
  done
}

echo "system deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_update
# install waits for the dpkg frontend lock itself.
apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT" install -y -qq "${need[@]}" >/dev/null
