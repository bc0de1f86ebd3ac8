# medguard-pipeline-writer: ingestion and every job that encrypts into the lake.
# It asks Transit for fresh data keys and unwraps stored ones, under three kinds of KEK:
#   medguard-kek      wraps batch-scoped data keys (created by `medguard vault up` / `keys init`, not by this role)
#   patient-<key>     one KEK per patient for crypto-shredding; created on a patient's first encryption
#   medguard-audit    wraps the key that signs the audit chain's head
# Nothing else: no rotation of medguard-kek, no configuration (min_decryption_version, deletion_allowed, trim),
# no deletion, no export (Transit keys are created non-exportable and only with type aes256-gcm96).
# `vault up` and approle.sh substitute the KEK name (medguard-kek) and the mount (transit/).

path "transit/datakey/plaintext/medguard-kek" {
  capabilities = ["update"]
}

path "transit/decrypt/medguard-kek" {
  capabilities = ["update"]
}

# Key metadata only (versions and dates, never key bytes): lets the provider check the KEK exists.
path "transit/keys/medguard-kek" {
  capabilities = ["read"]
}

# Per-patient KEKs. The glob also matches keys/patient-<key>/<operation>; allowed_parameters limits every
# write under it to creating an aes256-gcm96 key, which refuses config, trim and import (all take other
# parameters). An empty-body rotate stays possible: it only adds a version.
path "transit/keys/patient-*" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type" = ["aes256-gcm96"]
  }
}

path "transit/datakey/plaintext/patient-*" {
  capabilities = ["update"]
}

path "transit/decrypt/patient-*" {
  capabilities = ["update"]
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
