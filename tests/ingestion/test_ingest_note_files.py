"""Clinical notes as .txt files: keys from the header block, the text kept whole, bad files quarantined."""

from __future__ import annotations

from pathlib import Path

from ingestion.batch import ingest

NOTE = "Pt Jane Roe (MRN 12345678) seen for follow-up.\r\nBP 150/95.\n\nPlan: recheck in 3 months.\n"


def _note(folder: Path, name: str, content: bytes | str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)


def test_when_notes_arrive_as_text_files_then_each_file_is_one_note_with_its_keys_and_the_bad_are_quarantined(
        tmp_path: Path, ing_settings, plake, unlabel) -> None:
    notes = tmp_path / "notes"
    _note(notes, "N-1.txt", "patient_id: PAT0001\nencounter_id: ENC0001\nnote_time: 2024-03-01T10:00:00Z\n\n" + NOTE)
    _note(notes, "N-2.txt", "note_id: N-2b\npatient_id: PAT0002\n\nShort note.")
    _note(notes, "no-header.txt", "Just text, no keys at all.\nSecond line.\n")
    _note(notes, "bad-field.txt", "patient_id: PAT0003\nssn: 123-45-6789\n\nText.\n")
    _note(notes, "latin1.txt", "patient_id: PAT0004\n\nJosé".encode("latin-1"))
    _note(notes, "no-patient.txt", "encounter_id: ENC0009\n\nOrphan note.\n")
    _note(notes, "ignored.md", "patient_id: PAT0005\n\nnot a .txt file\n")

    report = ingest(ing_settings, source="notes", path=notes, plake=plake, docs=False)

    counts = report.tables["notes"]
    assert (counts.rows_in, counts.accepted, counts.quarantined) == (6, 2, 4)
    # A note without a note_id in its header takes its file's keyed label (a file name can name a patient).
    stored = {unlabel(r["note_id"], notes): r for r in plake.read("raw", "notes", decrypt=True).to_pylist()}
    assert set(stored) == {"N-1.txt", "N-2b"}
    stored["N-1"] = stored.pop("N-1.txt")
    assert stored["N-1"]["patient_id"] == "PAT0001" and stored["N-1"]["encounter_id"] == "ENC0001"
    assert stored["N-1"]["text"] == NOTE.replace("\r\n", "\n")          # everything after the blank line
    assert stored["N-2b"]["text"] == "Short note." and stored["N-2b"]["encounter_id"] is None
    rejects = {unlabel(r["position"], notes): r for r in plake.read("quarantine", "records", decrypt=True).to_pylist()}
    assert rejects["file no-header.txt"]["rules"] == ["record:header"]
    assert rejects["file bad-field.txt"]["rules"] == ["schema:columns"]
    reason = rejects["file bad-field.txt"]["reason"]
    assert "'ssn'" in reason and "123-45" not in reason
    assert rejects["file latin1.txt"]["rules"] == ["record:encoding"]
    assert rejects["file no-patient.txt"]["rules"] == ["patient_id:required"]
    assert "Orphan note." in rejects["file no-patient.txt"]["payload"]   # kept (sealed), never dropped


def test_when_a_note_file_is_over_the_size_limit_then_it_is_quarantined_with_its_first_bytes(
        tmp_path: Path, ing_settings, plake) -> None:
    small = ing_settings.model_copy(update={"ingestion": ing_settings.ingestion.model_copy(
        update={"max_record_bytes": 4096})})
    path = tmp_path / "big.txt"
    path.write_text("patient_id: PAT0001\n\n" + "x" * 100_000)
    report = ingest(small, source="notes", path=path, plake=plake, docs=False)
    assert (report.tables["notes"].rows_in, report.tables["notes"].quarantined) == (1, 1)
    (row,) = plake.read("quarantine", "records", decrypt=True).to_pylist()
    assert row["rules"] == ["record:size"] and row["payload_truncated"]
    assert row["payload"].startswith("patient_id: PAT0001") and len(row["payload"]) < 100_000
