# medguard-pipeline-writer: ingestion and every job that encrypts into the lake.
# Two KEKs, both created by `medguard vault up` / `keys init` / transit.sh, never by this role:
#   medguard-kek      the data KEK: wraps every patient's lifelong data key (made locally, wrapped by `encrypt`
#                     with batch_input, unwrapped by `decrypt` with batch_input) and the batch-scoped data keys
#                     (`datakey`) of rows that belong to no patient, and the pseudonym keys
#   medguard-audit    wraps the key that signs the audit chain's head
# Nothing else: no per-patient keys (shredding deletes the wrapped data key from the lake's key store, not a Vault
# key), no rotation, no configuration (min_decryption_version, deletion_allowed, trim), no deletion, no export.
# `vault up` and approle.sh substitute the KEK name (medguard-kek) and the mount (transit/).

path "transit/encrypt/medguard-kek" {
  capabilities = ["update"]
}

path "transit/decrypt/medguard-kek" {
  capabilities = ["update"]
}

path "transit/datakey/plaintext/medguard-kek" {
  capabilities = ["update"]
}

# Key metadata only (versions and dates, never key bytes): lets the provider check the KEK exists.
path "transit/keys/medguard-kek" {
  capabilities = ["read"]
}

# The audit log's signing key (exact path: no sub-operations).
path "transit/keys/medguard-audit" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type" = ["aes256-gcm96"]
  }
}

path "transit/datakey/plaintext/medguard-audit" {
  capabilities = ["update"]
}

path "transit/decrypt/medguard-audit" {
  capabilities = ["update"]
}

# The model registry's signing key (ed25519): created once with that type only, signs manifests and indexes inside
# Vault; its public keys (key metadata) verify them, so loading a model needs no secret.
path "transit/keys/medguard-model" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type" = ["ed25519"]
  }
}

path "transit/sign/medguard-model" {
  capabilities = ["update"]
}
