#!/bin/bash
# Runs once, when the PostgreSQL volume is first initialised (the official image runs
# /docker-entrypoint-initdb.d/*.sh): one role and one database each for MLflow and
# Prefect, so that either can be moved to its own server later.
set -euo pipefail

create() {  # role database password
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v role="$1" -v db="$2" -v password="$3" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
SQL
}

create mlflow mlflow "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
create prefect prefect "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"
