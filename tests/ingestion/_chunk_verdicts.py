"""What a chunk of source records becomes: its conformed rows and each row's broken rules (conform, then validate)."""

from __future__ import annotations

from ingestion.contract import builtin_contract
from ingestion.sources._base import TableRows
from ingestion.validate import ChunkValidator, conform


def conformed_verdicts(table: str, rows: list[dict]) -> tuple[list[dict], dict[int, set[str]]]:
    """The conformed rows of ``rows`` under the shipped contract of ``table``, and the rules each row broke."""
    contract = builtin_contract(table)
    chunk = TableRows()
    for number, row in enumerate(rows, start=1):
        chunk.add(row, f"line {number}")
    data, violations = conform(chunk, contract)
    for index, found in ChunkValidator(contract).validate(data).violations.items():
        violations.setdefault(index, []).extend(found)
    return data.to_pylist(), {index: {rule for rule, _ in found} for index, found in violations.items()}
