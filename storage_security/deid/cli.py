"""``medguard deidentify``: publish raw tables to the deidentified zone; ``deidentify evaluate``: score detection.

Registered with the spine's CLI through the ``medguard.commands`` entry point. Heavy imports (Presidio, spaCy)
stay inside the commands so that ``medguard --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli_support import JsonOption, emit, settings_from

deidentify_app = typer.Typer(
    help="De-identify raw tables into the deidentified zone (all of them, or --table NAME); "
         "`evaluate` scores PHI detection on labelled notes.",
    invoke_without_command=True,
)


@deidentify_app.callback()
def deidentify(
    ctx: typer.Context,
    table: Annotated[str | None, typer.Option("--table", help="One raw table; every raw table when omitted.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Rebuild from the whole raw history instead of publishing "
                                                      "only the raw batches not yet published.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Classify, mask, pass the k-anonymity gate and publish raw tables to `deidentified`.

    Incremental: only raw batches not yet published are decrypted and masked; a table with no new batch is left
    as it is (no decryption, no new version). `--full` rebuilds every table.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pipeline.errors import ValidationError
    from pipeline.progress import ProgressBoard
    from storage_security.deid.deidentify import publish_raw_zone, refused

    settings = settings_from(ctx)
    with ProgressBoard() as board:
        tables = board.steps("deidentify", unit="tables")
        with board.running("deidentify"):  # a table reports when it is published: a large one takes minutes
            result = publish_raw_zone([table] if table else None, settings=settings, full=full, progress=tables)
        tables.finish()
    lines = []
    for name, r in result.items():
        if r.get("refused"):
            lines.append(f"{name}: NOT published: {r['refused']}")
            continue
        if r.get("publication") == "unchanged":
            lines.append(f"{name}: version {r['version']}, unchanged (no new raw batch)")
            continue
        diversity = "" if r["l"] is None else f", l={r['l']}"
        flagged = f", flagged and dropped: {','.join(r['flagged_columns'])}" if r["flagged_columns"] else ""
        lines.append(f"{name}: version {r['version']}, {r['rows_out']} of {r['rows_in']} rows published, "
                     f"k={r['k']}{diversity}, {r['suppressed']} suppressed{flagged}")
    emit({"tables": result}, as_json, "\n".join(lines))
    if refused(result):
        raise ValidationError(f"the risk gate refused {', '.join(sorted(refused(result)))}: not published")


@deidentify_app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    notes: Annotated[Path, typer.Option("--notes", help='JSONL: {"text": …, "spans": [{"start","end","label"}]}',
                                        exists=True, dir_okay=False, readable=True)],
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline",
                                           help="Also score vanilla Presidio (default recognizers, same model), "
                                                "per HIPAA identifier kind beside medguard.")]
    = False,
    leak_report: Annotated[Path | None, typer.Option("--leak-report", dir_okay=False,
                                                     help="Write medguard's missed PHI spans here (JSONL: category "
                                                          "and redacted context, never the value).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score only the first N notes.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Score PHI detection token by token (label-agnostic overall, per label below), i2b2 style."""
    import json

    from storage_security.deid.detection import detect_many
    from storage_security.deid.evaluation import compare, leaks, load_labelled_notes, score

    settings = settings_from(ctx)
    labelled = load_labelled_notes(notes, limit=limit)
    if not labelled:
        raise ValueError(f"{notes} holds no labelled notes")
    texts = [n.text for n in labelled]
    runs = {"medguard": detect_many(texts, processes=settings.deidentify.processes)}
    if baseline:
        runs["vanilla"] = detect_many(texts, processes=settings.deidentify.processes, kind="vanilla")
    scores = score(labelled, runs["medguard"])
    result = scores.to_dict()
    lines = [_line("overall", scores.overall)] + [_line(label, s) for label, s in scores.per_label.items()]
    by_kind = compare(labelled, runs)
    result["hipaa"] = by_kind
    if baseline:
        result["baseline"] = by_kind["detectors"]["vanilla"]
        lines.append(_line("vanilla presidio", by_kind["detectors"]["vanilla"]["overall"]))
        lines.append(f"{'HIPAA kind':<14}{'support':>8}  {'medguard R':>10} {'P':>6}  {'vanilla R':>10} {'P':>6}")
        for kind, per in by_kind["categories"].items():
            m, v = per.get("medguard", {}), per.get("vanilla", {})
            support = m.get("support") or v.get("support") or 0
            lines.append(f"{kind:<14}{support:>8}  {_fmt(m.get('recall')):>10} {_fmt(m.get('precision')):>6}  "
                         f"{_fmt(v.get('recall')):>10} {_fmt(v.get('precision')):>6}")
    missed = leaks(labelled, runs["medguard"])
    result["leaks"] = len(missed)
    if leak_report is not None:
        leak_report.write_text("".join(json.dumps(m) + "\n" for m in missed))
        lines.append(f"{len(missed)} missed PHI spans written to {leak_report} (categories and redacted context)")
    emit(result, as_json, "\n".join(lines))


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _line(name: str, s: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "  -  " if v is None else f"{v:.3f}"

    return f"{name:<24} precision {fmt(s['precision'])}  recall {fmt(s['recall'])}  f2 {fmt(s['f2'])}"
