# medguard-key-rotation: `medguard keys init / rotate / reencrypt / shred / migrate`.
# Create the KEK, rotate it, rewrap stored data keys under the latest version in batches (their plaintext never
# leaves Vault) and set min_decryption_version, for the data KEK and the audit key. Shredding deletes a
# patient's wrapped data key from the lake's key store and needs no Vault permission of its own.
# Lakes written before the data-KEK hierarchy had one `patient-<key>` KEK per patient: `keys migrate` unwraps
# their data keys (decrypt), wraps them under the data KEK (encrypt, via pipeline-writer) and then deletes
# those KEKs (config deletion_allowed, then DELETE); a shred of a patient not yet migrated deletes theirs.
# Deleting medguard-kek or medguard-audit is deliberately in no policy: it would make the whole lake (or the
# audit chain's signatures) unverifiable, so it takes an operator token.

path "transit/keys/medguard-kek" {
  capabilities = ["create", "read", "update"]
}

path "transit/keys/medguard-kek/rotate" {
  capabilities = ["update"]
}

path "transit/keys/medguard-kek/config" {
  capabilities = ["update"]
}

path "transit/rewrap/medguard-kek" {
  capabilities = ["update"]
}

# Legacy per-patient KEKs (lakes not yet migrated): read, unwrap, and delete (config deletion_allowed, then
# DELETE) once `keys migrate` has moved their data keys, or when such a patient is shredded.
path "transit/keys/patient-*" {
  capabilities = ["read", "update", "delete"]
  allowed_parameters = {
    "deletion_allowed" = []
  }
}

path "transit/decrypt/patient-*" {
  capabilities = ["update"]
}

path "transit/keys/medguard-audit" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "*" = []
  }
}

path "transit/keys/medguard-audit/rotate" {
  capabilities = ["update"]
}

path "transit/keys/medguard-audit/config" {
  capabilities = ["update"]
}

path "transit/rewrap/medguard-audit" {
  capabilities = ["update"]
}
