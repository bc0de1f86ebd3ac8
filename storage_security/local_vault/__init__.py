"""The embedded default's Vault: a local OpenBao server (``openbao``) and the HCL policies (``policies/``) that
it and a production Vault (``infra/vault/approle.sh``) are configured with."""
