# medguard-key-rotation: `medguard keys init / rotate / reencrypt / shred`.
# Create the KEK, rotate it, rewrap stored data keys under the latest version (their plaintext never leaves
# Vault) and set min_decryption_version, for the batch KEK, the per-patient KEKs and the audit key.
# Shredding a patient deletes that patient's KEK (config deletion_allowed, then DELETE). Deleting medguard-kek
# or medguard-audit is deliberately in no policy: it would make the whole lake (or the audit chain's
# signatures) unverifiable, so it takes an operator token.

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

# Per-patient KEKs, including rotate, config and deletion (crypto-shredding) under the glob. Vault merges
# the allowed_parameters of every policy a token holds: "*" lifts pipeline-writer's restriction on this path
# for roles that hold both policies.
path "transit/keys/patient-*" {
  capabilities = ["create", "read", "update", "delete"]
  allowed_parameters = {
    "*" = []
  }
}

path "transit/rewrap/patient-*" {
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
