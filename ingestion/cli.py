"""``medguard ingest`` and ``medguard contract infer``: the ingestion layer's commands (registered as entry points).

Heavy imports stay inside the commands so that ``medguard --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli_support import JsonOption, emit, settings_from

contract_app = typer.Typer(name="contract", help="Data contracts of the ingestion layer.", no_args_is_help=True,
                           add_completion=False, pretty_exceptions_enable=False)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The console summary of a batch: rows in / accepted / quarantined per table, and quarantines by rule."""
    lines = [f"batch {result['batch_id']} ({result['source']}: {result['path']})"
             + (" — already loaded, ledger counts" if result.get("replayed") else "")]
    for table, counts in result["tables"].items():
        dup = f", {counts['duplicates']} duplicates stored once" if counts.get("duplicates") else ""
        lines.append(f"  {table}: {counts['in']} in, {counts['accepted']} accepted, "
                     f"{counts['quarantined']} quarantined{dup}")
        for rule, count in counts.get("by_rule", {}).items():
            lines.append(f"    {rule}: {count}")
    if result.get("data_docs"):
        lines.append(f"  Data Docs: {result['data_docs']}")
    return lines


def ingest(
    ctx: typer.Context,
    source: Annotated[str, typer.Option("--source", help="tabular, fhir, hl7, ccda or notes.")],
    path: Annotated[Path, typer.Option("--path", help="Extract file, or a directory of FHIR/HL7/C-CDA files.")],
    table: Annotated[str | None, typer.Option("--table", help="Table of a tabular extract (default: file stem).")]
    = None,
    contract: Annotated[Path | None, typer.Option("--contract", help="Contract YAML; inferred when omitted.")]
    = None,
    as_json: JsonOption = False,
) -> None:
    """Validate a source against its data contract, quarantine rejects, load the rest into raw (PHI encrypted)."""
    from ingestion.batch import ingest as run

    result = run(settings_from(ctx), source=source, path=path, table=table, contract=contract).to_dict()
    compact = {"batch_id": result["batch_id"],
               "tables": {t: {k: c[k] for k in ("in", "accepted", "quarantined")} for t, c in result["tables"].items()},
               "duplicates": {t: c["duplicates"] for t, c in result["tables"].items()},
               "quarantined_by_rule": {t: c["by_rule"] for t, c in result["tables"].items() if c["by_rule"]},
               "data_docs": result["data_docs"], "replayed": result["replayed"]}
    emit(compact, as_json, "\n".join(summary_lines(result)))


@contract_app.command("infer")
def infer(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A CSV, Parquet or JSON-lines extract.")],
    table: Annotated[str | None, typer.Option("--table", help="Table name (default: file stem).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Draft a data contract from an extract (types, ranges, enumerations, PHI columns) and save it for review."""
    from ingestion.batch import _table_from_path
    from ingestion.infer import infer_contract, save_draft

    settings = settings_from(ctx)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    draft = infer_contract(path, table=table or _table_from_path(path),
                           sample_rows=settings.ingestion.infer_sample_rows,
                           max_columns=settings.ingestion.max_columns,
                           max_record_bytes=settings.ingestion.max_record_bytes)
    saved = save_draft(settings, draft)
    emit({"table": draft.table, "contract": str(saved), "phi_columns": list(draft.phi_columns),
          "columns": {n: c.type for n, c in draft.columns.items()}}, as_json,
         f"draft contract for {draft.table} saved to {saved}\n{draft.to_yaml().rstrip()}")
