"""Keys: the provider interface (``base``), Vault/OpenBao Transit (``vault_transit`` over the one hvac client
``_vault``) and the local keyring (``keyring``), the choice between them (``providers``), the store of wrapped
data keys (``dek_store``) and the rotate / re-encrypt / shred recipes (``lifecycle``)."""
