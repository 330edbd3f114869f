#!/usr/bin/env bash
# Install the system packages the tests and the demo run for real: PostgreSQL (initdb,
# postgres, pg_dump, ...) and redis-server, promtool, chromium (headless, for the report test),
# MariaDB (mariadbd, mariadb-install-db, mariadb-dump, mariadb) for the command source's e2e test, zsh (completion test),
# plus python3-venv where Debian's python3 lacks it. Only what is missing is installed, so on a
# machine that has them this is instant and needs no network or root.
set -euo pipefail

missing=()
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi
if ! command -v redis-server >/dev/null 2>&1; then
  missing+=(redis-server)
fi
# promtool (Debian's prometheus package) checks alert rules and dashboard queries in tests.
if ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
# Headless Chromium renders `kubectl aegis report --format html` in a test.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  missing+=(chromium)
fi
# MariaDB: the e2e test of the `command` source dumps with mariadb-dump and restores with mariadb.
if ! command -v mariadbd >/dev/null 2>&1 && ! [[ -x /usr/sbin/mariadbd ]]; then
  missing+=(mariadb-server)
fi
if ! command -v mariadb-dump >/dev/null 2>&1; then
  missing+=(mariadb-client)
fi
# zsh: the completion test checks the generated zsh script with `zsh -n` (bash is always there).
if ! command -v zsh >/dev/null 2>&1; then
  missing+=(zsh)
fi
if ! "${PYTHON:-python3}" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if ((${#missing[@]} == 0)); then
  echo "system packages: postgresql, redis-server, promtool, chromium, mariadb, zsh and python3-venv already installed"
  exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-system-packages: need root (or sudo) to install: ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-packages: no apt-get here; install ${missing[*]} with your package manager" >&2
  exit 1
fi

echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
