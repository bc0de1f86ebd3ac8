#!/usr/bin/env bash
# Production Transit set-up for medguard (idempotent): enable the Transit engine, create the KEK as an
# aes256-gcm96 key (not exportable, no plaintext backup), and let Vault rotate it on a schedule.
#
# Needs VAULT_ADDR and an operator VAULT_TOKEN. Works with HashiCorp Vault (`vault`) and OpenBao (`bao`):
#   VAULT_BIN=bao ./infra/vault/transit.sh
# Settings it reads (the same names medguard reads, so one environment serves both):
#   MEDGUARD_VAULT__TRANSIT_MOUNT  (default transit)
#   MEDGUARD_VAULT__KEK_NAME       (default medguard-kek)
#   KEK_AUTO_ROTATE_PERIOD         (default 720h = 30 days; 0 turns automatic rotation off)
set -euo pipefail

VAULT="${VAULT_BIN:-vault}"
MOUNT="${MEDGUARD_VAULT__TRANSIT_MOUNT:-transit}"
KEK="${MEDGUARD_VAULT__KEK_NAME:-medguard-kek}"
ROTATE="${KEK_AUTO_ROTATE_PERIOD:-720h}"

# The listing is read whole before grep: with pipefail, `list | grep -q` fails when grep exits early (SIGPIPE).
if ! grep -q "\"${MOUNT}/\"" <<<"$("$VAULT" secrets list -format=json)"; then
  "$VAULT" secrets enable -path="$MOUNT" -description="medguard key-encryption keys" transit
fi

# Creating an existing Transit key changes nothing, so re-running is safe.
"$VAULT" write -f "$MOUNT/keys/$KEK" type=aes256-gcm96 exportable=false allow_plaintext_backup=false >/dev/null
"$VAULT" write "$MOUNT/keys/$KEK/config" auto_rotate_period="$ROTATE" deletion_allowed=false >/dev/null

# The model registry's signing key: asymmetric (ed25519), so model verifiers need only its public key.
"$VAULT" write -f "$MOUNT/keys/medguard-model" type=ed25519 exportable=false allow_plaintext_backup=false >/dev/null
"$VAULT" write "$MOUNT/keys/medguard-model/config" deletion_allowed=false >/dev/null

# Rotation adds a version; data keys wrapped under older versions still unwrap until `medguard keys rotate`
# has rewrapped them and min_decryption_version is raised (see infra/README.md).
"$VAULT" read "$MOUNT/keys/$KEK"
