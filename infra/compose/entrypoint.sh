#!/usr/bin/env bash
# Entry point of the medguard image: turn Docker secrets into the variables medguard, Spark and Airflow read, then
# hand over to the Airflow image's own entry point (which runs `airflow <command>`, or `bash`/`python` as given).
#
# For every variable NAME_FILE=/run/secrets/x among MEDGUARD_*_FILE and _SPARK_AUTH_SECRET_FILE, NAME is exported
# with the file's content and NAME_FILE is removed (medguard refuses unknown MEDGUARD_* settings, so a leftover
# MEDGUARD_VAULT__SECRET_ID_FILE would stop every command). Secrets never appear in the compose file or in `docker
# inspect`; a missing or empty file stops the container with one line naming the variable, not the value.
set -euo pipefail

for name in $(compgen -e); do
  case "$name" in
    MEDGUARD_*_FILE | _SPARK_AUTH_SECRET_FILE) ;;
    *) continue ;;
  esac
  file="${!name}"
  target="${name%_FILE}"
  if [[ ! -s "$file" ]]; then
    echo "entrypoint: $name names $file, which is missing or empty (run infra/compose/gen-secrets.sh and the set-up jobs)" >&2
    exit 78
  fi
  export "$target"="$(<"$file")"
  unset "$name"
done

# Spark's shared secret: the master and workers read _SPARK_AUTH_SECRET from the environment, and hand it to their
# executors; a driver (a task's Spark session, `medguard serve`) reads only spark.authenticate.secret from its conf.
# So the driver gets a private copy of SPARK_CONF_DIR (the mounted infra/spark, read-only) with the secret added,
# in a 0700 folder of the container's own /tmp, where pyspark's launcher reads it.
if [[ -n "${_SPARK_AUTH_SECRET:-}" && -d "${SPARK_CONF_DIR:-}" ]]; then
  conf="$(mktemp -d "${TMPDIR:-/tmp}/spark-conf.XXXXXX")"
  cp -R "$SPARK_CONF_DIR"/. "$conf"/
  chmod -R u+w "$conf"
  printf '\nspark.authenticate.secret %s\n' "$_SPARK_AUTH_SECRET" >>"$conf/spark-defaults.conf"
  chmod 0600 "$conf/spark-defaults.conf"
  export SPARK_CONF_DIR="$conf"
fi

# Files a service cannot start without that no variable names (e.g. the kwargs file of Airflow's Vault backend,
# read through a _CMD option), space-separated.
for file in ${REQUIRED_SECRET_FILES:-}; do
  if [[ ! -s "$file" ]]; then
    echo "entrypoint: $file is missing or empty (run the openbao-setup job: infra/README.md)" >&2
    exit 78
  fi
done
unset REQUIRED_SECRET_FILES

# AIRFLOW_ENTRYPOINT: the Airflow image's entry point (a test points it elsewhere).
entry="${AIRFLOW_ENTRYPOINT:-/entrypoint}"
unset AIRFLOW_ENTRYPOINT
exec "$entry" "$@"
