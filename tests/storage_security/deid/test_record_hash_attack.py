"""The attack of issue 17 on ``_record_hash``: enumerate patient ids x label values and compare digests.

raw.outcomes is ingested by the real ingestion path. The attacker knows every patient id and every row's index
date (more than a data engineer sees) and tries each label combination under the digests one could guess
(SHA-256 of the row as JSON, as in the issue; the record-hash encoding under an empty key or another lake's key).
Nothing matches. The same enumeration under the lake's own key recovers every row, so the test can fail.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import pyarrow as pa
import pytest
from _deid_raw import generated

from ingestion.batch import ingest
from ingestion.checking import HashKey, record_hash_key, record_hashes
from pipeline.lake import Lake
from storage_security.protected import ProtectedLake

PROVENANCE = ("patient_pseudonym", "_source", "_batch_id", "_ingested_at", "_record_hash", "_identity")
LABELS = ("prevalent_t2d", "t2d_within_1y")


def _candidates(rows: list[dict]) -> list[dict]:
    """Every row of every known patient id with every label combination (booleans or missing)."""
    out = []
    for row in rows:
        for values in itertools.product((True, False, None), repeat=len(LABELS)):
            out.append({**row, **dict(zip(LABELS, values, strict=True))})
    return out


@pytest.mark.integration
def test_when_patient_ids_and_labels_are_enumerated_then_no_record_hash_is_recovered(tmp_path, settings, keyring):
    run = settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    plake = ProtectedLake(Lake(run), keyring, principal="svc:ingest")
    source = generated(60, 11)
    ingest(run, source="tabular", path=source / "outcomes.parquet", table="outcomes", plake=plake, docs=False)
    raw = plake.read("raw", "outcomes", decrypt=True)
    stored = set(raw.column("_record_hash").to_pylist())
    content = raw.drop_columns([c for c in PROVENANCE if c in raw.column_names])
    guesses = pa.Table.from_pylist(_candidates(content.to_pylist()), schema=content.schema)
    assert guesses.num_rows == 9 * raw.num_rows >= 9 * 60

    other = ProtectedLake(Lake(run.model_copy(update={"lake_root": str(tmp_path / "other")})), keyring,
                          principal="svc:ingest")
    attempts = {
        "sha256 of the row as JSON": [hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode())
                                      .hexdigest() for r in guesses.to_pylist()],
        "record-hash encoding, empty key": record_hashes("outcomes", guesses, HashKey(b"")),
        "record-hash encoding, another lake's key": record_hashes("outcomes", guesses, record_hash_key(other)),
    }
    recovered = {name: len(stored & set(digests)) for name, digests in attempts.items()}
    assert recovered == dict.fromkeys(attempts, 0)

    # The control: with the lake's own (provider-wrapped) key the same enumeration finds every row.
    own = record_hashes("outcomes", guesses, record_hash_key(plake))
    assert len(stored & set(own)) == len(stored)
