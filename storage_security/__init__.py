"""Layer 2, storage & security: what the other layers import to write, read and audit protected data.

The package is split by job:

- ``keys/``: key providers (Vault/OpenBao Transit through hvac, a local keyring), the DEK store, key lifecycle;
- ``crypto/``: AES-256-GCM cells under cached data keys, keyed pseudonyms (raw AES-GCM stays in ``_aead``);
- ``protected.py``: the lake adapter every layer writes PHI through (seal, write, read, decrypt, audit);
- ``audit/``: the hash-chained audit log and activity monitoring over it;
- ``deid/``: PHI detection (Presidio recognizers), masking operators, the risk gate, publication;
- ``local_vault/``: the embedded OpenBao server and its Vault policies.

``__all__`` below is the surface other layers use; the sub-packages' own modules are for this layer, its CLI
and its tests.
"""

from storage_security.audit.log import AuditAction, AuditEvent, AuditLog, Decision
from storage_security.keys.base import KeyProvider
from storage_security.keys.providers import provider_from_settings
from storage_security.protected import ProtectedLake, Protection, ReadResult

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditLog",
    "Decision",
    "KeyProvider",
    "ProtectedLake",
    "Protection",
    "ReadResult",
    "provider_from_settings",
]
