#!/usr/bin/env bash
# The OpenBao set-up job of the compose deployment (service `openbao-setup`, profile `setup`), run by an operator
# after initialising and unsealing OpenBao; idempotent, so re-running it also issues fresh secret ids.
#
#   VAULT_TOKEN=<operator token> docker compose -f infra/compose/docker-compose.yml --profile setup \
#       run --rm -e VAULT_TOKEN openbao-setup
#
# 1. infra/vault/transit.sh and infra/vault/approle.sh: the Transit keys, the medguard policies and AppRoles.
# 2. Airflow's secrets backend: KV v2 at `airflow`, policy medguard-airflow (openbao/airflow.hcl) and its AppRole.
# 3. Connections Airflow's tasks read there (pipeline/airflow_support.py, orchestration.secrets: vault):
#    airflow/connections/medguard_vault (the medguard-pipeline AppRole), medguard_vault_key_rotation
#    (medguard-key-rotation, for the weekly rotate_keys DAG), medguard_vault_auditor (medguard-auditor) and
#    airflow/connections/medguard_lake (the lake's S3 user).
# 4. Credentials for the containers that are not Airflow tasks, written into SECRETS_OUT (the secrets/ folder):
#    medguard_vault_role_id + medguard_vault_secret_id (medguard-pipeline, for `medguard serve` and the Spark
#    workers) and airflow_vault_kwargs (the backend's kwargs JSON: AppRole of medguard-airflow).
#
# The operator token is read from the environment only and written nowhere. Settings (environment):
#   VAULT_ADDR (https://openbao:8200), VAULT_CACERT (/run/secrets/ca_cert), VAULT_BIN (bao), SECRETS_OUT
#   (/secrets-out), SECRET_ID_TTL (720h: the services' secret ids expire after it; re-run this job before),
#   APPROLE_BOUND_CIDRS (optional), VAULT_HOST/VAULT_PORT as the tasks reach OpenBao (openbao, 8200), LAKE_ENDPOINT
#   (http://minio:9000), LAKE_REGION (us-east-1), LAKE_ACCESS_KEY_FILE / LAKE_SECRET_KEY_FILE
#   (/run/secrets/medguard_s3_access_key, /run/secrets/medguard_s3_secret_key).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VAULT_DIR="${MEDGUARD_VAULT_SCRIPTS:-$HERE/../../vault}"
export VAULT_BIN="${VAULT_BIN:-bao}"
export VAULT_ADDR="${VAULT_ADDR:-https://openbao:8200}"
export VAULT_CACERT="${VAULT_CACERT:-/run/secrets/ca_cert}"
export SECRET_ID_TTL="${SECRET_ID_TTL:-720h}"
OUT="${SECRETS_OUT:-/secrets-out}"
VAULT_HOST="${VAULT_HOST:-openbao}"
VAULT_PORT="${VAULT_PORT:-8200}"
LAKE_ENDPOINT="${LAKE_ENDPOINT:-http://minio:9000}"
LAKE_REGION="${LAKE_REGION:-us-east-1}"
LAKE_ACCESS_KEY_FILE="${LAKE_ACCESS_KEY_FILE:-/run/secrets/medguard_s3_access_key}"
LAKE_SECRET_KEY_FILE="${LAKE_SECRET_KEY_FILE:-/run/secrets/medguard_s3_secret_key}"
VAULT="$VAULT_BIN"

if [[ -z "${VAULT_TOKEN:-}" ]]; then
  echo "openbao-setup: VAULT_TOKEN is not set: pass an operator token with -e VAULT_TOKEN (it is stored nowhere)" >&2
  exit 64
fi
if [[ ! -d "$OUT" || ! -w "$OUT" ]]; then
  echo "openbao-setup: $OUT is not a writable folder (mount infra/compose/secrets there)" >&2
  exit 73
fi

# `status` exits 0 unsealed, 2 sealed, 1 unreachable.
for _ in $(seq 1 30); do
  if "$VAULT" status >/dev/null 2>&1; then
    break
  fi
  sleep 2
done
if ! "$VAULT" status >/dev/null 2>&1; then
  echo "openbao-setup: $VAULT_ADDR is not reachable, not initialised or sealed: run bao operator init/unseal first" >&2
  exit 69
fi

"$VAULT_DIR/transit.sh" >/dev/null
"$VAULT_DIR/approle.sh"

# The listing is read whole before grep: with pipefail, `list | grep -q` fails when grep exits early (SIGPIPE).
if ! grep -q '"airflow/"' <<<"$("$VAULT" secrets list -format=json)"; then
  "$VAULT" secrets enable -path=airflow -description="Airflow connections and variables" kv-v2
fi
"$VAULT" policy write medguard-airflow "$HERE/airflow.hcl" >/dev/null
args=(token_policies=medguard-airflow token_ttl=1h token_max_ttl=4h secret_id_ttl="$SECRET_ID_TTL" secret_id_num_uses=0)
if [[ -n "${APPROLE_BOUND_CIDRS:-}" ]]; then
  args+=(secret_id_bound_cidrs="$APPROLE_BOUND_CIDRS" token_bound_cidrs="$APPROLE_BOUND_CIDRS")
fi
"$VAULT" write auth/approle/role/medguard-airflow "${args[@]}" >/dev/null

role_id() { "$VAULT" read -field=role_id "auth/approle/role/$1/role-id"; }
secret_id() { "$VAULT" write -f -field=secret_id "auth/approle/role/$1/secret-id"; }
json() { python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@"; }

umask 022
# Tasks: one AppRole per job as Airflow connections in Vault (pipeline/airflow_support.py): the pipeline's, the
# weekly key rotation's (the pipeline role may not rotate or rewrap) and the audit monitor's; then the lake's S3 user.
connection() {
  json conn_type vaults host "$VAULT_HOST" port "$VAULT_PORT" login "$(role_id "$1")" \
    password "$(secret_id "$1")" extra '{"auth_type": "approle", "use_tls": true}' \
    | "$VAULT" kv put -mount=airflow "connections/$2" - >/dev/null
}
connection medguard-pipeline medguard_vault
connection medguard-key-rotation medguard_vault_key_rotation
connection medguard-auditor medguard_vault_auditor
if [[ -s "$LAKE_ACCESS_KEY_FILE" && -s "$LAKE_SECRET_KEY_FILE" ]]; then
  extra="$(json endpoint_url "$LAKE_ENDPOINT" region_name "$LAKE_REGION" AWS_ALLOW_HTTP true \
    AWS_S3_ALLOW_UNSAFE_RENAME true)"
  json conn_type aws login "$(<"$LAKE_ACCESS_KEY_FILE")" password "$(<"$LAKE_SECRET_KEY_FILE")" extra "$extra" \
    | "$VAULT" kv put -mount=airflow connections/medguard_lake - >/dev/null
else
  echo "openbao-setup: no S3 credentials at $LAKE_ACCESS_KEY_FILE: airflow/connections/medguard_lake not written" >&2
fi

# Services that are not Airflow tasks: their own secret id of medguard-pipeline, and Airflow's backend kwargs.
role_id medguard-pipeline >"$OUT/medguard_vault_role_id"
secret_id medguard-pipeline >"$OUT/medguard_vault_secret_id"
python3 - "$VAULT_ADDR" "$(role_id medguard-airflow)" "$(secret_id medguard-airflow)" >"$OUT/airflow_vault_kwargs" <<'PY'
import json
import sys

addr, role_id, secret_id = sys.argv[1:]
print(json.dumps({"url": addr, "auth_type": "approle", "role_id": role_id, "secret_id": secret_id,
                  "mount_point": "airflow", "kv_engine_version": 2, "connections_path": "connections",
                  "variables_path": "variables", "config_path": None, "verify": "/run/secrets/ca_cert"}))
PY

echo "openbao-setup: Transit keys, policies and AppRoles in place; Airflow connections medguard_vault," \
  "medguard_vault_key_rotation, medguard_vault_auditor and medguard_lake written; credentials in $OUT (secret ids expire after $SECRET_ID_TTL)"
