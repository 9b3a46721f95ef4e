#!/usr/bin/env bash
# Installs what the tests need from Debian: the PostgreSQL server that
# tests/infra/test_servers.py starts (MLflow's and Prefect's backend store), and Chromium,
# the headless browser that tests/flows/test_demo_pipeline.py opens the MLflow UI in.
# MLflow and Prefect (and the psycopg driver) come with the Python environment.
# Idempotent and quick: installs only what is missing.
#
#   bash infra/ci/install-services.sh --require   # CI (.ci/run), before `make test`
#   bash infra/ci/install-services.sh             # a laptop: installs if it can, else says so
#
# With --require (or SSP_NO_SKIPS / CI set to a true value, as under .ci/run) anything that
# would make the server tests skip is an error here: no apt-get, no way to become root, no
# `postgres` system user to own the cluster when running as root. (Under CI a skipped test
# fails anyway: tests/conftest.py.) Without it, the script warns and exits 0, and the
# server tests skip.
#
# Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin (not on PATH);
# the tests look there. No cluster is created or started here: each test run
# initialises a throwaway one in a temp folder.
set -euo pipefail

truthy() { case "${1:-}" in "" | 0 | false | no) return 1 ;; *) return 0 ;; esac }
REQUIRE=0
if [ "${1:-}" = "--require" ] || truthy "${SSP_NO_SKIPS:-}" || truthy "${CI:-}"; then
    REQUIRE=1
fi

# missing: an error under --require / CI, a warning (and the server tests skip) otherwise
missing() {
    if [ "$REQUIRE" = 1 ]; then
        echo "install-services: ERROR: $1 (required under CI: the server tests would skip)" >&2
        exit 1
    fi
    echo "install-services: $1; the real-server tests skip without it." >&2
    exit 0
}

check_owner() {
    # initdb and postgres refuse to run as root: the tests run them as the `postgres` user
    if [ "$(id -u)" -eq 0 ] && ! getent passwd postgres >/dev/null; then
        missing "running as root and there is no \`postgres\` system user to own the test cluster"
    fi
}

PACKAGES=()
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    check_owner
    echo "install-services: PostgreSQL already installed ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))"
else
    PACKAGES+=(postgresql)
fi
if command -v chromium >/dev/null; then
    echo "install-services: Chromium already installed ($(command -v chromium))"
else
    PACKAGES+=(chromium)
fi
[ ${#PACKAGES[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    missing "no apt-get here; install ${PACKAGES[*]} yourself"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || missing "not root and no sudo: cannot apt-get install ${PACKAGES[*]}"
    SUDO="sudo"
fi

# (postgresql) the package would create and start a system cluster on port 5432: not wanted here
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/no-main-cluster.conf >/dev/null

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o Acquire::Retries=3 update -qq
$SUDO apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || {
    echo "install-services: postgresql installed but no /usr/lib/postgresql/*/bin/initdb" >&2
    exit 1
}
command -v chromium >/dev/null || {
    echo "install-services: chromium installed but not on PATH" >&2
    exit 1
}
check_owner
echo "install-services: installed ${PACKAGES[*]}"
