"""Encrypted backups of the lake, the key store and the audit log, and their restore (``medguard backup``)."""
