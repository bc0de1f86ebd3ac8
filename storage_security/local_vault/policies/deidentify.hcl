# medguard-deidentify: the de-identification job. It unwraps the data keys of raw cells (the patients'
# and the batch-scoped ones, all under the data KEK, in batches), may make fresh data keys under medguard-kek for
# what it writes, and signs audit heads. It cannot rotate, reconfigure or delete any key.

path "transit/decrypt/medguard-kek" {
  capabilities = ["update"]
}

path "transit/encrypt/medguard-kek" {
  capabilities = ["update"]
}

path "transit/datakey/plaintext/medguard-kek" {
  capabilities = ["update"]
}

path "transit/keys/medguard-kek" {
  capabilities = ["read"]
}

path "transit/keys/medguard-audit" {
  capabilities = ["read"]
}

path "transit/datakey/plaintext/medguard-audit" {
  capabilities = ["update"]
}

path "transit/decrypt/medguard-audit" {
  capabilities = ["update"]
}
