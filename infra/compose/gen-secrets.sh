#!/usr/bin/env bash
# Generate the secrets and TLS material of the compose deployment into infra/compose/secrets/ (idempotent: an
# existing file is kept, so re-running never rotates a password under a running database).
#
#   infra/compose/gen-secrets.sh [SECRETS_DIR]     (default: the secrets/ folder beside this script)
#
# The folder is the boundary: it is 0700 and owned by the operator who runs this, and git ignores it. Its files
# are 0644 because each container reads the ones it is given (docker compose bind-mounts them at /run/secrets/NAME)
# as its own user (postgres, openbao, airflow), and no other container is given them. Back the folder up offline
# (the CA key signs the services' certificates; the set-up job adds the AppRole secret ids here).
#
# TLS: a private CA (ca/ca.crt; ca/ca.key stays here and is mounted nowhere) signs the certificates of OpenBao
# (openbao, localhost) and of `medguard serve` (medguard-api, localhost). Replace them with your hospital PKI's
# certificates under the same names. CERT_DAYS (default 397) sets their lifetime.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-$HERE/secrets}"
DAYS="${CERT_DAYS:-397}"
BUCKET="${LAKE_BUCKET:-medguard-lake}"

umask 022
mkdir -p "$OUT/ca"
chmod 0700 "$OUT" "$OUT/ca"

random() { openssl rand -base64 48 | tr -d '/+=\n' | cut -c1-"${1:-40}"; }

# write NAME CONTENT: create secrets/NAME unless it exists.
write() {
  if [[ -s "$OUT/$1" ]]; then
    return
  fi
  printf '%s' "$2" >"$OUT/$1"
  echo "wrote $OUT/$1"
}

write postgres_password "$(random)"
write airflow_db_conn "postgresql+psycopg://airflow:$(<"$OUT/postgres_password")@postgres:5432/airflow"
# Fernet key: 32 url-safe base64 bytes (Airflow encrypts connection passwords in its database with it).
write airflow_fernet_key "$(openssl rand -base64 32 | tr '+/' '-_')"
write airflow_jwt_secret "$(random 64)"
write airflow_api_secret_key "$(random 64)"
write airflow_admin_password "$(random 24)"
write spark_auth_secret "$(random 64)"

write minio_root_user "medguard-root-$(random 8)"
write minio_root_password "$(random)"
write minio_config_env "MINIO_ROOT_USER=$(<"$OUT/minio_root_user")
MINIO_ROOT_PASSWORD=$(<"$OUT/minio_root_password")
"
# The lake's own S3 user (minio-setup creates it with access to the lake bucket only).
write medguard_s3_access_key "medguard-$(random 12)"
write medguard_s3_secret_key "$(random)"
# delta-rs storage options for `medguard serve` and the Spark workers (Airflow tasks read the same from the
# medguard_lake connection in Vault). Plain HTTP stays on the compose network `lake`, which publishes no port.
write medguard_storage_options "{\"AWS_ENDPOINT_URL\": \"http://minio:9000\", \"AWS_REGION\": \"us-east-1\",
 \"AWS_ACCESS_KEY_ID\": \"$(<"$OUT/medguard_s3_access_key")\", \"AWS_SECRET_ACCESS_KEY\": \"$(<"$OUT/medguard_s3_secret_key")\",
 \"AWS_ALLOW_HTTP\": \"true\", \"AWS_S3_ALLOW_UNSAFE_RENAME\": \"true\"}
"

# Written by the OpenBao set-up job (openbao/setup.sh); empty until it has run, and every service that needs one
# refuses to start while it is empty.
for later in medguard_vault_role_id medguard_vault_secret_id airflow_vault_kwargs; do
  [[ -e "$OUT/$later" ]] || : >"$OUT/$later"
done

# TLS --------------------------------------------------------------------------------------------------------------
if [[ ! -s "$OUT/ca/ca.key" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=medguard compose CA" \
    -keyout "$OUT/ca/ca.key" -out "$OUT/ca/ca.crt" 2>/dev/null
  chmod 0600 "$OUT/ca/ca.key"
  echo "wrote $OUT/ca/ca.crt"
fi
[[ -s "$OUT/ca_cert" ]] || cp "$OUT/ca/ca.crt" "$OUT/ca_cert"

# cert NAME SAN: a key and a certificate for NAME signed by the CA.
cert() {
  if [[ -s "$OUT/$1_tls_cert" ]]; then
    return
  fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$OUT/$1_tls_key" -out "$OUT/$1.csr" 2>/dev/null
  openssl x509 -req -in "$OUT/$1.csr" -CA "$OUT/ca/ca.crt" -CAkey "$OUT/ca/ca.key" -CAcreateserial -days "$DAYS" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$2") -out "$OUT/$1_tls_cert" 2>/dev/null
  rm -f "$OUT/$1.csr"
  # Readable by the service's own user in its container (openbao, airflow); the 0700 folder guards it on the host.
  chmod 0644 "$OUT/$1_tls_key"
  echo "wrote $OUT/$1_tls_cert"
}
cert openbao "DNS:openbao,DNS:localhost,IP:127.0.0.1"
cert medguard_api "DNS:medguard-api,DNS:localhost,IP:127.0.0.1"

echo "secrets are in $OUT (bucket for the lake: $BUCKET); next: docker compose up -d openbao, then init and unseal"
