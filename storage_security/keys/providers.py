"""Pick the key provider the settings ask for: Vault/OpenBao Transit (remote or the local server) or the keyring."""

from __future__ import annotations

from pipeline.settings import Settings
from storage_security.keys.base import KeyProvider


def provider_from_settings(settings: Settings, *, role: str | None = None) -> KeyProvider:
    """The :class:`~storage_security.keys.base.KeyProvider` of ``settings.key_provider``.

    - ``vault`` with ``vault.addr`` set: :class:`~storage_security.keys.vault_transit.VaultTransitKeys` on that
      Vault, authenticated as ``vault.auth_method`` says (token or AppRole).
    - ``vault`` with ``vault.addr`` empty: the local OpenBao of ``medguard vault up``, logged in by AppRole with
      the credentials ``vault up`` stored under the home (production's path, on one machine).
    - ``keyring``: :class:`~storage_security.keys.keyring.LocalKeyring` from its settings.

    Args:
        settings: medguard settings.
        role: for the local OpenBao only, which AppRole of :data:`~storage_security.local_vault.openbao.ROLES`
            to log in as
            (default ``medguard-pipeline``, which can make and unwrap data keys but not rotate; key lifecycle
            commands use ``medguard-key-rotation``). A remote Vault uses the credentials in the settings.

    Raises:
        KeyProviderUnavailableError: the local OpenBao is not running (run ``medguard vault up``).
        SettingsError: the Vault auth settings are incomplete.
    """
    if settings.key_provider == "keyring":
        from storage_security.keys.keyring import LocalKeyring

        return LocalKeyring.from_settings(settings)

    from storage_security.keys._vault import VaultClient
    from storage_security.keys.vault_transit import VaultTransitKeys

    if settings.vault.addr:
        client = VaultClient.from_settings(settings.vault)
    else:
        from storage_security.local_vault import openbao

        creds = openbao.local_credentials(settings, role or openbao.PIPELINE_ROLE)
        client = VaultClient(
            creds.addr,
            auth_method="approle",
            role_id=creds.role_id,
            secret_id=creds.secret_id,
            timeout=settings.vault.timeout_seconds,
        )
    return VaultTransitKeys(client, mount=settings.vault.transit_mount)
