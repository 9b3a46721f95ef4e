#!/usr/bin/env bash
# Installs what tests/infra/test_servers.py starts as real servers: Debian's PostgreSQL
# server (MLflow's and Prefect's backend store). MLflow and Prefect come with the
# Python environment. Idempotent and quick: does nothing when the binaries are there.
#
#   bash infra/ci/install-services.sh        # CI calls it before `make test`
#
# Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin (not on PATH);
# the tests look there. No cluster is created or started here: each test run
# initialises a throwaway one in a temp folder.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "install-services: PostgreSQL already installed ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install-services: no apt-get here; install a PostgreSQL server (initdb, postgres) yourself." \
         "The real-server tests skip without it." >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# the package would create and start a system cluster on port 5432: not wanted here
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/no-main-cluster.conf >/dev/null

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o Acquire::Retries=3 update -qq
$SUDO apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends postgresql >/dev/null

compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || {
    echo "install-services: postgresql installed but no /usr/lib/postgresql/*/bin/initdb" >&2
    exit 1
}
echo "install-services: installed PostgreSQL ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))"
