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
    path: Annotated[Path, typer.Option("--path", help="Extract file, or a directory of FHIR/HL7/C-CDA files.")],
    source: Annotated[str | None, typer.Option(
        "--source", help="tabular, fhir, hl7, ccda or notes (required unless --locate).")] = None,
    table: Annotated[str | None, typer.Option(
        "--table", help="Table of a tabular extract (required unless the file stem is a known table or contract).")]
    = None,
    contract: Annotated[Path | None, typer.Option("--contract", help="Contract YAML; inferred when omitted.")]
    = None,
    locate: Annotated[str | None, typer.Option(
        "--locate", help="Find the file a quarantine position's fd_<16 hex> label names in --path (a folder); "
                         "loads nothing.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate a source against its data contract, quarantine rejects, load the rest into raw (PHI encrypted).

    Files are named in the lake by a keyed label (fd_…), never by their name (a file name can name a patient);
    --locate LABEL --path FOLDER finds the file a label stands for. Exits non-zero, with the first quarantine
    reasons, when every record was quarantined and nothing loaded.
    """
    from ingestion.batch import ingest as run
    from pipeline.progress import PLAIN_INTERVAL_S, ProgressBoard

    if locate is not None:
        _locate(ctx, locate, path, as_json)
        return
    if source is None:
        raise ValueError("--source is required (tabular, fhir, hl7, ccda or notes)")
    if source == "tabular" and table is None and contract is None:
        table = known_table(settings_from(ctx), path)

    with ProgressBoard() as board:
        tables = board.callback("ingest")
        if table is not None and source == "tabular" and path.suffix.lower() == ".parquet" and path.is_file():
            # Not with a contract and no --table: the table is the contract's, and a file stem is never shown.
            tables.expect(table, _parquet_rows(path))
        # A chunk is read and checked whole before its first table loads (30 s for 300 FHIR patients): meanwhile,
        # a heartbeat.
        with board.running(f"ingest {source}", every=PLAIN_INTERVAL_S):  # not the file's name: it can name a patient
            result = run(settings_from(ctx), source=source, path=path, table=table, contract=contract,
                         progress=tables).to_dict()
        tables.finish()
    compact = {"batch_id": result["batch_id"],
               "tables": {t: {k: c[k] for k in ("in", "accepted", "quarantined")} for t, c in result["tables"].items()},
               "duplicates": {t: c["duplicates"] for t, c in result["tables"].items()},
               "quarantined_by_rule": {t: c["by_rule"] for t, c in result["tables"].items() if c["by_rule"]},
               "data_docs": result["data_docs"], "replayed": result["replayed"]}
    emit(compact, as_json, "\n".join(summary_lines(result)))
    nothing_loaded(result)


def _locate(ctx: typer.Context, label: str, folder: Path, as_json: bool) -> None:
    """Print the file(s) of ``folder`` a keyed file label stands for; raise when none does."""
    from ingestion.batch import locate_file
    from pipeline.errors import MedguardError

    found = locate_file(settings_from(ctx), label, folder)
    if not found:
        raise MedguardError(f"no file in {folder} has that label under this lake's key (another folder, or another "
                            "lake?)")
    emit({"files": [str(p) for p in found]}, as_json, "\n".join(str(p) for p in found))


def nothing_loaded(result: dict[str, Any], shown: int = 3) -> None:
    """Raise when a batch loaded nothing and quarantined something: its input was refused whole.

    Raises:
        ValidationError: naming the quarantined count and the first reasons (table, rules, record position).
    """
    from pipeline.errors import ValidationError

    counts = result["tables"].values()
    quarantined = sum(c["quarantined"] for c in counts)
    if quarantined == 0 or any(c["accepted"] for c in counts):
        return
    distinct: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for reason in result.get("first_reasons", []):  # one example per rule broken, in the order met
        distinct.setdefault((reason["table"], tuple(reason["rules"])), reason)
    reasons = "; ".join(f"{r['table']} {_short(r['reason'])} [{','.join(r['rules'])}]"
                        for r in list(distinct.values())[:shown])
    where = f"first reasons: {reasons}" if reasons else "the reasons are in the quarantine zone (quarantine/records)"
    raise ValidationError(f"nothing loaded from {result['path']}: all {quarantined:,} records were quarantined; "
                          f"{where}")


def _parquet_rows(path: Path) -> int | None:
    """The row count in a Parquet file's footer, or None when the footer does not read (the ingest will say why)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (OSError, ValueError):
        return None


def known_table(settings: Any, path: Path) -> str:
    """The table a file's stem names, when it is a conformed table, a contract in ``$MEDGUARD_HOME/contracts`` or a
    raw table already in the lake.

    A file name can name a patient ("john_smith_labs.csv") and a table name becomes a lake path, a contract file and
    audit detail, so no other stem is taken as a table name.

    Raises:
        ValueError: the stem names no known table (the message does not repeat it).
    """
    from ingestion.batch import _table_from_path
    from ingestion.contract import CONFORMED_TABLES
    from pipeline.lake import Lake

    name = _table_from_path(path)
    folder = settings.home / "contracts"
    drafts = {p.name.split(".")[0] for p in folder.glob("*.yaml")} if folder.is_dir() else set()
    if name in CONFORMED_TABLES or name in drafts or name in Lake(settings).tables("raw"):
        return name
    raise ValueError("the file name is not a known table or contract name and is never used as one (file names can "
                     "name patients): pass --table NAME")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


@contract_app.command("infer")
def infer(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A CSV, Parquet or JSON-lines extract.")],
    table: Annotated[str | None, typer.Option(
        "--table", help="Table name (required unless the file stem is a known table or contract).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Draft a data contract from an extract (types, ranges, enumerations, PHI columns) and save it for review."""
    from ingestion.infer import infer_contract, save_draft

    settings = settings_from(ctx)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    draft = infer_contract(path, table=table or known_table(settings, path),
                           sample_rows=settings.ingestion.infer_sample_rows,
                           max_columns=settings.ingestion.max_columns,
                           max_record_bytes=settings.ingestion.max_record_bytes)
    saved = save_draft(settings, draft)
    emit({"table": draft.table, "contract": str(saved), "phi_columns": list(draft.phi_columns),
          "columns": {n: c.type for n, c in draft.columns.items()}}, as_json,
         f"draft contract for {draft.table} saved to {saved}\n{draft.to_yaml().rstrip()}")
