#!/bin/sh
# The MinIO set-up job of the compose deployment (service `minio-setup`, runs once per `docker compose up`;
# idempotent): the lake bucket, with versioning left off (a deleted key file of a shredded patient must not survive
# as an old version: infra/README.md), and the lake's own S3 user, allowed only that bucket (policy
# minio/lake-policy.json). The root credentials are used here only; medguard never sees them.
#
# Environment: LAKE_BUCKET (medguard-lake), MINIO_URL (http://minio:9000), and the Docker secrets
# minio_root_user, minio_root_password, medguard_s3_access_key, medguard_s3_secret_key under /run/secrets.
set -eu

BUCKET="${LAKE_BUCKET:-medguard-lake}"
URL="${MINIO_URL:-http://minio:9000}"
SECRETS="${SECRETS_DIR:-/run/secrets}"
POLICY_TEMPLATE="${POLICY_TEMPLATE:-/setup/lake-policy.json}"
# mc keeps its alias (with the root credentials) under $HOME/.mc: a tmpfs in the container.
export MC_CONFIG_DIR="${MC_CONFIG_DIR:-/tmp/mc}"

mc alias set lake "$URL" "$(cat "$SECRETS/minio_root_user")" "$(cat "$SECRETS/minio_root_password")" >/dev/null
mc mb --ignore-existing "lake/$BUCKET"
versioning="$(mc version info "lake/$BUCKET")"
if echo "$versioning" | grep -qi "enabled"; then
  echo "minio-setup: versioning is enabled on $BUCKET; shredded keys would survive as old versions: suspend it" >&2
  exit 1
fi

access_key="$(cat "$SECRETS/medguard_s3_access_key")"
sed "s/@BUCKET@/$BUCKET/g" "$POLICY_TEMPLATE" >"$MC_CONFIG_DIR/lake-policy.json"
mc admin policy create lake medguard-lake "$MC_CONFIG_DIR/lake-policy.json" >/dev/null
mc admin user add lake "$access_key" "$(cat "$SECRETS/medguard_s3_secret_key")" >/dev/null
# Attaching twice is an error; a second run checks the user already holds the policy instead.
if ! mc admin policy attach lake medguard-lake --user "$access_key" >/dev/null 2>&1; then
  user_info="$(mc admin user info lake "$access_key")"
  if ! echo "$user_info" | grep -q "medguard-lake"; then
    echo "minio-setup: could not give the lake user the policy medguard-lake" >&2
    exit 1
  fi
fi
echo "minio-setup: bucket $BUCKET ready (versioning off), user for the lake allowed only that bucket"
