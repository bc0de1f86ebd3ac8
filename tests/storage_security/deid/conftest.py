"""Fixtures of the de-identification tests: masking keys from a keyring-backed protected lake."""

from __future__ import annotations

import pytest

from pipeline.lake import Lake
from storage_security.deid.operators import MaskingKeys
from storage_security.protected import ProtectedLake


@pytest.fixture
def keys(lake: Lake, keyring) -> MaskingKeys:
    """Masking keys whose surrogates may never be "evan" or "clark" (the real names of the release)."""
    return MaskingKeys(ProtectedLake(lake, keyring, principal="test").pseudonymizer, forbidden_names={"evan", "clark"})
