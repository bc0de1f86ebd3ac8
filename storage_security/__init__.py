"""Layer 2: PHI detection, masking, key providers, envelope encryption and the tamper-evident audit log.

The public surface (``__all__``) is the recipes: protected tables, the cell cipher, pseudonyms, key providers,
key lifecycle and the audit log. Raw AES-GCM and hvac calls stay in the private ``_`` modules.
"""

from storage_security.audit import AuditAction, AuditEvent, AuditLog, Decision, VerifyReport
from storage_security.dek_store import DekStore
from storage_security.envelope import CellCipher
from storage_security.keyring import LocalKeyring
from storage_security.keys import DataKey, KeyProvider, KeyVersions
from storage_security.protected import ProtectedLake, Protection, ReadResult
from storage_security.providers import provider_from_settings
from storage_security.pseudonyms import Pseudonymizer
from storage_security.vault_transit import VaultTransitKeys

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditLog",
    "CellCipher",
    "DataKey",
    "Decision",
    "DekStore",
    "KeyProvider",
    "KeyVersions",
    "LocalKeyring",
    "ProtectedLake",
    "Protection",
    "Pseudonymizer",
    "ReadResult",
    "VaultTransitKeys",
    "VerifyReport",
    "provider_from_settings",
]
