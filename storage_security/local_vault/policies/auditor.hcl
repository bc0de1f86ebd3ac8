# medguard-auditor: `medguard audit verify`. Reads key metadata (versions, creation times,
# min_decryption_version, rotation period) and unwraps the audit log's signing key to check signed heads.
# It cannot make or unwrap any data key of the lake.

path "transit/keys/medguard-kek" {
  capabilities = ["read"]
}

path "transit/keys/medguard-audit" {
  capabilities = ["read"]
}

path "transit/decrypt/medguard-audit" {
  capabilities = ["update"]
}

# The model registry's ed25519 public keys (metadata only: the auditor can verify a model, not sign one).
path "transit/keys/medguard-model" {
  capabilities = ["read"]
}

# The audit chain's anchored head (written only by medguard-audit-anchor): read, to check the log against it.
path "medguard-audit/data/anchors/*" {
  capabilities = ["read"]
}
