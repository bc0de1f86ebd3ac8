# OpenBao server of the compose deployment (mounted read-only at /etc/openbao/config.hcl).
#
# Paths are the image's own folders, which its entry point hands to the `openbao` user: /openbao/file (raft data,
# volume openbao-data) and /openbao/logs (the audit log, volume openbao-audit).
#
# Raft integrated storage in the `openbao-data` volume; TLS on the listener with the certificate from
# gen-secrets.sh (Docker secrets openbao_tls_cert / openbao_tls_key); audit devices declared here, because OpenBao
# refuses to enable audit devices through the API (sys/audit): every request and response, secrets HMAC'd, goes to
# a file in the `openbao-audit` volume and to the container's stdout (two devices: a request succeeds if one of them
# can log it). Initialise and unseal by hand (infra/README.md): Shamir shares, one per custodian; no auto-unseal
# here (add a `seal` stanza for your HSM or cloud KMS).

# OpenBao has no mlock (and no disable_mlock setting): keep swap off or encrypted on the host.
ui           = false
api_addr     = "https://openbao:8200"
cluster_addr = "https://openbao:8201"

storage "raft" {
  path    = "/openbao/file"
  node_id = "openbao-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/run/secrets/openbao_tls_cert"
  tls_key_file    = "/run/secrets/openbao_tls_key"
  tls_min_version = "tls12"
}

audit "file" "file" {
  description = "every request and response, to the openbao-audit volume"
  options {
    file_path = "/openbao/logs/audit.log"
    mode      = "0600"
  }
}

audit "file" "stdout" {
  description = "the same to docker logs, so a full audit volume does not block every request"
  options {
    file_path = "stdout"
  }
}
