#!/usr/bin/env bash
# Production AppRole set-up for medguard (idempotent): write the policies (storage_security/local_vault/policies), enable AppRole and
# create one role per job, each holding only its policies. `medguard vault up` does the same on the local
# OpenBao (storage_security/local_vault/openbao.py, ROLES), so the demo authenticates exactly like production.
#
# Needs VAULT_ADDR and an operator VAULT_TOKEN; run transit.sh first. Works with `vault` and `bao` (VAULT_BIN).
#   MEDGUARD_VAULT__TRANSIT_MOUNT  (default transit)      substituted for transit/ in the policies
#   MEDGUARD_VAULT__KEK_NAME       (default medguard-kek) substituted for medguard-kek in the policies
#   APPROLE_BOUND_CIDRS            (optional, e.g. 10.0.4.0/24) where secret ids and tokens may be used from
#   SECRET_ID_TTL                  (default 24h) how long a secret id stays valid; a long-running service (the
#                                  compose deployment's `medguard serve`) needs one that outlives its restarts
set -euo pipefail

VAULT="${VAULT_BIN:-vault}"
MOUNT="${MEDGUARD_VAULT__TRANSIT_MOUNT:-transit}"
KEK="${MEDGUARD_VAULT__KEK_NAME:-medguard-kek}"
CIDRS="${APPROLE_BOUND_CIDRS:-}"
SECRET_TTL="${SECRET_ID_TTL:-24h}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

POLICIES="$HERE/../../storage_security/local_vault/policies"
for file in "$POLICIES"/*.hcl; do
  name="medguard-$(basename "$file" .hcl)"
  sed -e "s#\"transit/#\"${MOUNT}/#g" -e "s#medguard-kek#${KEK}#g" "$file" | "$VAULT" policy write "$name" -
done

# Listings are read whole before grep: with pipefail, `list | grep -q` fails when grep exits early (SIGPIPE).
if ! grep -q '"approle/"' <<<"$("$VAULT" auth list -format=json)"; then
  "$VAULT" auth enable approle
fi

# role -> policies; keep in step with ROLES in storage_security/local_vault/openbao.py.
declare -A ROLES=(
  [medguard-pipeline]="medguard-pipeline-writer"
  [medguard-deidentify]="medguard-deidentify"
  [medguard-clinician]="medguard-clinician-reidentify"
  [medguard-key-rotation]="medguard-key-rotation,medguard-pipeline-writer,medguard-auditor"
  [medguard-auditor]="medguard-auditor"
  [medguard-audit-anchor]="medguard-audit-anchor"
)

# KV v2 for the audit chain's anchored heads (written only by medguard-audit-anchor).
if ! grep -q '"medguard-audit/"' <<<"$("$VAULT" secrets list -format=json)"; then
  "$VAULT" secrets enable -path=medguard-audit kv-v2
fi

for role in "${!ROLES[@]}"; do
  args=(token_policies="${ROLES[$role]}" token_ttl=1h token_max_ttl=4h secret_id_ttl="$SECRET_TTL" secret_id_num_uses=0)
  if [[ -n "$CIDRS" ]]; then
    args+=(secret_id_bound_cidrs="$CIDRS" token_bound_cidrs="$CIDRS")
  fi
  "$VAULT" write "auth/approle/role/$role" "${args[@]}" >/dev/null
  echo "$role: role_id $("$VAULT" read -field=role_id "auth/approle/role/$role/role-id")"
done

cat <<'NEXT'
Give each job its role_id (MEDGUARD_VAULT__ROLE_ID) and a secret id delivered by response wrapping, e.g.
  vault write -wrap-ttl=120s -f auth/approle/role/medguard-pipeline/secret-id
and set MEDGUARD_VAULT__AUTH_METHOD=approle, MEDGUARD_VAULT__SECRET_ID to the unwrapped secret_id.
NEXT
