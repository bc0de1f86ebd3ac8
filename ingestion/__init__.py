"""Layer 1: reads EHR extracts, FHIR bundles, HL7 v2 messages and notes into the raw zone under data contracts.

The public surface: :func:`ingest` (one batch), :func:`ingest_extract` (every input of a source kind in an
extract folder), contracts (:func:`load_contract`, :func:`builtin_contract`, :func:`infer_contract`).
"""

from ingestion.batch import SOURCES, BatchReport, TableCounts, ingest, ingest_extract
from ingestion.contract import CONFORMED_TABLES, Contract, builtin_contract, load_contract
from ingestion.infer import infer_contract

__all__ = [
    "CONFORMED_TABLES",
    "SOURCES",
    "BatchReport",
    "Contract",
    "TableCounts",
    "builtin_contract",
    "infer_contract",
    "ingest",
    "ingest_extract",
    "load_contract",
]
