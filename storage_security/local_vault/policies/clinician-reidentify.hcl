# medguard-clinician-reidentify: the policy-enforced gateway re-identifying records for a clinician.
# Decrypt (unwrap data keys) only, under the data KEK (patients' and batch data keys) and the audit key (to sign
# the audit events of what it reveals). It never makes or wraps a data key, so it cannot write encrypted data.

path "transit/decrypt/medguard-kek" {
  capabilities = ["update"]
}

path "transit/decrypt/medguard-audit" {
  capabilities = ["update"]
}
