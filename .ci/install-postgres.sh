#!/usr/bin/env bash
# Install PostgreSQL for tests/test_serve_replicas.py (Debian/Ubuntu: the postgresql server package).
# The tests start a throwaway server themselves (initdb + pg_ctl in a temporary folder, as the 'postgres' user
# when run as root); nothing is started here. Exit 0 when initdb/pg_ctl are (now) available, non-zero otherwise.
set -euo pipefail
find_bin() { ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1; }
if command -v initdb >/dev/null || [ -n "$(find_bin)" ]; then
  echo "install-postgres: already installed ($(find_bin || command -v initdb))"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null || { echo "install-postgres: needs root or passwordless sudo" >&2; exit 1; }
  SUDO="sudo -n"
fi
command -v apt-get >/dev/null || { echo "install-postgres: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
[ -n "$(find_bin)" ] || { echo "install-postgres: initdb not found after installing postgresql" >&2; exit 1; }
echo "install-postgres: installed ($(find_bin))"
