"""Ingestion through a real Vault (OpenBao dev server), and the ``medguard ingest`` / ``contract infer`` commands."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ingestion.batch import ingest
from pipeline.cli import app
from pipeline.lake import Lake
from storage_security.protected import ProtectedLake

NOTES = [{"note_id": f"N{i}", "patient_id": f"PAT{i}", "encounter_id": f"E{i}", "note_time": "2024-01-01T00:00:00Z",
          "text": f"Patient Jane Roe{i} seen today.", "spans": []} for i in range(3)]


def test_when_ingesting_through_vault_transit_then_phi_is_sealed_and_reads_back(
        tmp_path: Path, ing_settings, vault_provider, kek_name: str) -> None:
    vault_provider.ensure_key("medguard-audit")
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps(n) + "\n" for n in NOTES))
    plake = ProtectedLake(Lake(ing_settings), vault_provider, principal="svc:ingest", kek_name=kek_name)
    report = ingest(ing_settings, source="notes", path=path, plake=plake, docs=False)
    assert report.tables["notes"].accepted == 3
    assert plake.lake.read_arrow("raw", "notes").schema.field("text").type == "binary"
    texts = sorted(plake.read("raw", "notes", decrypt=True).column("text").to_pylist())
    assert texts == sorted(n["text"] for n in NOTES)


def test_when_ingest_runs_from_the_command_line_then_json_reports_counts(tmp_path: Path, monkeypatch,
                                                                        keyring_env) -> None:
    monkeypatch.setenv("MEDGUARD_LAKE_ROOT", str(tmp_path / "lake"))
    extract = tmp_path / "visits.csv"
    extract.write_text("visit_id,person_id,phone,score\nV1,A1,503-555-0101,3.5\nV2,A2,503-555-0102,4.0\n")
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "--source", "tabular", "--path", str(extract), "--table", "visits",
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["tables"] == {"visits": {"in": 2, "accepted": 2, "quarantined": 0}}
    assert out["batch_id"].startswith("b")
    later = tmp_path / "visits_later.csv"
    later.write_text("visit_id,person_id,phone,score\nV3,A3,503-555-0103,oops\nV4,A4,503-555-0104,3.9\n")
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    contract = get_settings().home / "contracts" / "visits.draft.yaml"
    assert contract.is_file()
    second = runner.invoke(app, ["ingest", "--source", "tabular", "--path", str(later), "--contract", str(contract),
                                 "--json"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["tables"] == {"visits": {"in": 2, "accepted": 1, "quarantined": 1}}
    inferred = runner.invoke(app, ["contract", "infer", str(extract), "--json"])
    assert inferred.exit_code == 0, inferred.output
    assert set(json.loads(inferred.stdout)["phi_columns"]) == {"person_id", "phone"}
