"""Notes, FHIR and HL7 outputs: spans are exact, bundles and messages parse with the real libraries."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import hl7
import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from pipeline.synthetic import PHI_LABELS, generate

pytestmark = pytest.mark.integration  # every test reads a generated population, checked by third-party parsers


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("formats") / "clean"
    generate(out, patients=120, seed=21, formats=["parquet", "fhir", "hl7", "notes"])
    return out


def _notes(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "notes.jsonl").read_text().splitlines()]


def test_when_notes_generated_then_every_span_covers_exactly_its_phi(clean: Path) -> None:
    import pandas as pd

    patients = pd.read_parquet(clean / "patients.parquet").set_index("patient_id")
    notes = _notes(clean)
    assert len(notes) == 120
    for note in notes:
        text, spans = note["text"], note["spans"]
        person = patients.loc[note["patient_id"]]
        assert spans == sorted(spans, key=lambda s: s["start"])
        for a, b in itertools.pairwise(spans):
            assert a["end"] <= b["start"], "spans overlap"
        covered = {text[s["start"]:s["end"]]: s["label"] for s in spans}
        assert all(label in PHI_LABELS for label in covered.values())
        assert covered[person["mrn"]] == "MEDICAL_RECORD_NUMBER"
        assert covered[f"{person['first_name']} {person['last_name']}"] == "PERSON"
        # Every identifier of the patient that appears in the text is inside a span.
        for value in (person["mrn"], person["ssn"], person["phone"], person["email"], person["address"],
                      person["insurance_member_id"]):
            start = text.find(value)
            if start >= 0:
                assert any(s["start"] <= start and start + len(value) <= s["end"] for s in spans), value


def test_when_notes_generated_then_only_ages_over_89_are_labelled(clean: Path) -> None:
    for note in _notes(clean):
        for span in note["spans"]:
            if span["label"] == "AGE":
                assert int(note["text"][span["start"]:span["end"]]) > 89


def test_when_fhir_generated_then_every_bundle_parses_with_fhir_resources(clean: Path) -> None:
    kinds: set[str] = set()
    lines = [line for f in sorted((clean / "fhir").glob("*.ndjson")) for line in f.read_text().splitlines()]
    assert len(lines) == 120
    for line in lines:
        bundle = Bundle.model_validate_json(line)
        kinds |= {entry.resource.get_resource_type() for entry in bundle.entry}
    assert {"Patient", "Encounter", "Observation", "Condition", "MedicationRequest", "Immunization"} <= kinds


def test_when_fhir_generated_then_observations_carry_loinc_and_ucum(clean: Path) -> None:
    line = (clean / "fhir" / "bundles-00000.ndjson").read_text().splitlines()[0]
    resources = [e["resource"] for e in json.loads(line)["entry"]]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert observations
    for obs in observations:
        assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
        assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"


def _messages(root: Path) -> list[str]:
    return [m for f in sorted((root / "hl7").glob("*.hl7")) for m in f.read_bytes().decode().split("\n") if m]


def test_when_hl7_generated_then_every_message_passes_hl7apy_strict_validation(clean: Path) -> None:
    messages = _messages(clean)
    types = set()
    for raw in messages:
        message = parse_message(raw, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        types.add(message.msh.msh_9.to_er7())
    assert types == {"ADT^A01^ADT_A01", "ORU^R01^ORU_R01"}


def test_when_hl7_generated_then_python_hl7_reads_patient_and_results(clean: Path) -> None:
    oru = next(m for m in _messages(clean) if "ORU^R01" in m)
    message = hl7.parse(oru)
    assert str(message.segment("PID")[3][0][4]) == "MR"
    values = [float(str(obx[5])) for obx in message.segments("OBX")]
    assert values and all(v > 0 for v in values)
