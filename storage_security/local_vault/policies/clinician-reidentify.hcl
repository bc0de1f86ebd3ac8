# medguard-clinician-reidentify: the policy-enforced gateway re-identifying records for a clinician.
# Decrypt (unwrap data keys) only, under the batch KEK, the per-patient KEKs and the audit key (to sign the
# audit events of what it reveals). It never makes a data key, so it cannot write encrypted data.

path "transit/decrypt/medguard-kek" {
  capabilities = ["update"]
}

path "transit/decrypt/patient-*" {
  capabilities = ["update"]
}

path "transit/decrypt/medguard-audit" {
  capabilities = ["update"]
}
