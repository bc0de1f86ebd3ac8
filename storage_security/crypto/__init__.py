"""Cryptography on cells: AES-256-GCM envelope encryption of Arrow columns (``envelope``, over the private
primitive ``_aead``) and keyed HMAC pseudonyms for join keys (``pseudonyms``)."""
