"""The one exception hierarchy of medguard: a base error and one subclass per concern.

Adapters to foreign libraries (Delta, Spark, Vault, Airflow) translate their exceptions into these with
``raise ... from exc`` so callers never need to know which engine sits underneath.
"""

from __future__ import annotations


class MedguardError(Exception):
    """Base of every error medguard raises on purpose."""


class SettingsError(MedguardError):
    """Raised by ``pipeline.settings`` when a setting is missing or invalid; the message names the setting."""


class StorageError(MedguardError):
    """Raised by the lake adapter when a Delta table cannot be read or written, or an engine is unusable."""


class EngineUnavailableError(StorageError):
    """Raised at start-up when the configured engine lacks a required part (e.g. Delta's jars for Spark)."""


class CryptoError(MedguardError):
    """Raised by the security core for key-provider and encryption failures."""


class AccessDeniedError(MedguardError):
    """Raised by the access layer when a policy denies an action."""


class ValidationError(MedguardError):
    """Raised when input breaks a data contract and cannot be quarantined record by record."""


class ModelIntegrityError(MedguardError):
    """Raised by analytics when a model artifact or its signature does not verify."""


class OrchestrationError(MedguardError):
    """Raised by ``pipeline.orchestration`` when Airflow cannot be set up or a DAG run does not succeed."""


class KeyProviderUnavailableError(CryptoError):
    """Raised by key providers when Vault/OpenBao or the keyring cannot be reached or read; nothing is written."""


class KeyAccessDeniedError(CryptoError):
    """Raised by key providers when Vault answers 403; the message names the path and the policy to check."""


class DecryptionError(CryptoError):
    """Raised by envelope decryption: "decryption failed" naming the cell, never the key or the reason."""


class AuditIntegrityError(MedguardError):
    """Raised by ``medguard audit verify`` when the audit hash chain or a signed head does not verify.

    The message is one line naming the first bad event's sequence number and why it is bad.
    """


class PlaintextLeakError(MedguardError):
    """Raised by the demo's verify step when plaintext identifiers of the sources are found in the lake's files.

    Never ``AssertionError``: the check is a guarantee the product makes, and ``python -O`` must not skip it.
    """
