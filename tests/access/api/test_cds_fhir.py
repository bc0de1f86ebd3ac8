"""FHIR R4 prefetch → the diagnosis service's encounter, and a diagnosis → cards and a RiskAssessment.

The mapping tests read the official HL7 examples (see ``_cds``) against the test model's inputs (``_model``):
what is used, what is left out and why, the patient's age at the hook's time, a panel's components, the latest
result per code, refusals of malformed or foreign resources. The tests marked integration score with a real
signed model (trained and registered in a second, verified by the diagnosis service).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from access.api.cds_fhir import (
    PrefetchInvalid,
    PrefetchMissing,
    cards_for,
    encounter_from_prefetch,
    prefetch_templates,
)
from access.api.scoring import DiagnosisService, EncounterIn, ObservationIn, PayloadInvalid
from pipeline.settings import load_settings
from storage_security.keys.keyring import LocalKeyring
from tests.access.api import _cds
from tests.access.api._model import DX, OBS, register_model

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MODEL = {"name": "outcomes__t2d_within_1y", "version": 1, "model_version": "outcomes__t2d_within_1y@v1",
         "observation_codes": OBS, "condition_codes": DX, "sex_levels": [],
         "condition_map": {"snomed|38341003": "I10", "snomed|15777000": "R73.03"}}


def _only(rows):
    """The full prefetch, with ``rows`` as what the HbA1c search returned and every other search empty."""
    return _cds.prefetch(**{k.replace("-", "_"): None for k in _cds.OBSERVATION_KEYS} | {"obs_4548_4": rows})


A1C = "prefetch.obs-4548-4"


def _map(prefetch=None, model=MODEL, patient="example"):
    return encounter_from_prefetch(patient, _cds.prefetch() if prefetch is None else prefetch, model, at=AT)


def _obs(code, value, unit, when, *, oid, status="final"):
    return {"resourceType": "Observation", "id": oid, "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/example"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def test_when_discovery_lists_the_prefetch_then_it_asks_for_the_models_loinc_codes_and_the_bp_panel():
    templates = prefetch_templates(MODEL, count=50)
    assert templates["patient"] == "Patient/{{context.patientId}}"
    # One search per code, so a flood of one vital sign cannot crowd out a yearly lab result.
    for code in [*OBS, "85354-9"]:
        assert templates[f"obs-{code}"] == (f"Observation?patient={{{{context.patientId}}}}&code=http://loinc.org|"
                                            f"{code}&_sort=-date&_count=50")
    assert set(templates) == {"patient", "conditions", *(f"obs-{c}" for c in [*OBS, "85354-9"])}
    assert templates["conditions"] == "Condition?patient={{context.patientId}}"


def test_when_the_official_examples_are_mapped_then_the_models_inputs_are_used_and_the_rest_reported():
    mapped = _map()
    enc = mapped.encounter
    assert enc.age == 51  # born 1974-12-25, seen 2026-11-30
    got = {(o.code, o.value, o.unit) for o in enc.observations}
    # The BP panel's two components, BMI, and HDL in the unit the lab sent (the service converts it).
    assert got == {("8480-6", 107.0, "mm[Hg]"), ("8462-4", 60.0, "mm[Hg]"), ("39156-5", 16.2, "kg/m2"),
                   ("2085-9", 1.3, "mmol/L")}
    bp = next(o for o in enc.observations if o.code == "8480-6")
    assert bp.effective == datetime(2012, 9, 17, tzinfo=UTC)
    ignored = dict(mapped.ignored)
    # Blood glucose and the lab's cholesterol are other LOINC codes than the model's: reported, not used.
    assert ignored["prefetch.obs-2345-7.entry[0].resource"] == "LOINC 15074-8 is not an input of the model"
    assert ignored["prefetch.obs-2093-3.entry[0].resource"] == "LOINC 35200-5 is not an input of the model"
    # Neither SNOMED condition maps to an input of the model: both reported, none sent.
    assert enc.conditions == []
    assert ignored["prefetch.conditions.entry[0].resource.code"].startswith("SNOMED CT 422504002")
    assert mapped.basis() == ["Patient/example", "Observation/bmi", "Observation/hdlcholesterol",
                              "Observation/blood-pressure"]


def test_when_a_condition_is_coded_in_icd10cm_or_a_mapped_snomed_code_then_it_is_sent():
    stroke = _cds.example("Condition-stroke.json")
    stroke["code"]["coding"] = [{"system": "http://snomed.info/sct", "code": "38341003"}]
    icd = _cds.example("Condition-example.json")
    icd["code"]["coding"].append({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R73.03"})
    refuted = _cds.example("Condition-example.json")
    refuted["verificationStatus"]["coding"][0]["code"] = "refuted"
    prefetch = {**_cds.prefetch(), "conditions": _cds.searchset([stroke, icd, refuted])}
    mapped = _map(prefetch)
    assert [(c.code, c.system) for c in mapped.encounter.conditions] == [("38341003", "snomed"),
                                                                         ("R73.03", "icd10cm")]
    assert dict(mapped.ignored)["prefetch.conditions.entry[2].resource"] == "verification status refuted"


def test_when_a_code_has_several_results_then_all_are_sent_and_the_latest_is_shown():
    rows = [_obs("4548-4", 7.9, "%", "2026-03-01", oid="a1c-new"), _obs("4548-4", 6.1, "%", "2024-01-01",
                                                                          oid="a1c-old"),
            _obs("4548-4", 48, "mmol/mol", "2025-06-01", oid="a1c-mid")]
    mapped = _map(_only(rows))
    assert [o.value for o in mapped.encounter.observations] == [7.9, 6.1, 48]
    latest = mapped.latest()["4548-4"]
    assert (latest.value, latest.reference) == (7.9, "Observation/a1c-new")


def test_when_a_result_is_cancelled_or_has_a_comparator_or_no_value_then_it_is_left_out_with_why():
    cancelled = _cds.example("Observation-blood-pressure-cancel.json")
    cancelled["id"] = "bp-cancel"
    less = _obs("2345-7", 50, "mg/dL", "2026-01-01", oid="g-less")
    less["valueQuantity"]["comparator"] = "<"
    empty = _obs("2345-7", 1, "mg/dL", "2026-01-01", oid="g-none")
    del empty["valueQuantity"]
    empty["dataAbsentReason"] = {"text": "not done"}
    mapped = _map(_only([cancelled, less, empty]))
    assert mapped.encounter.observations == []
    why = dict(mapped.ignored)
    assert why[f"{A1C}.entry[0].resource"].startswith("status cancelled")
    assert why[f"{A1C}.entry[1].resource"].startswith("a value with a comparator")
    assert why[f"{A1C}.entry[2].resource"] == "no valueQuantity value"


def test_when_the_search_carries_an_operation_outcome_or_a_next_page_then_they_are_noted_not_used():
    bundle = _cds.searchset([_cds.example("Observation-blood-pressure.json")])
    bundle["entry"].append({"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "incomplete"}]}, "search": {"mode": "outcome"}})
    bundle["link"] = [{"relation": "next", "url": "https://ehr.example/fhir?page=2"}]
    mapped = _map({**_only(None), "obs-85354-9": bundle})
    assert len(mapped.encounter.observations) == 2
    assert dict(mapped.ignored)["prefetch.obs-85354-9.entry[1].resource"] == "a search OperationOutcome, not data"
    assert any("later pages are not read" in n for n in mapped.notes)


def test_when_a_key_is_absent_or_an_operation_outcome_then_prefetch_missing_but_null_means_no_data():
    for key in ("patient", "obs-4548-4", "obs-85354-9", "conditions"):
        prefetch = _cds.prefetch()
        del prefetch[key]
        with pytest.raises(PrefetchMissing) as caught:
            _map(prefetch)
        assert caught.value.field == f"prefetch.{key}" and caught.value.status == 412
    with pytest.raises(PrefetchMissing):
        _map({**_cds.prefetch(), "patient": None})
    with pytest.raises(PrefetchMissing):
        _map({**_cds.prefetch(), "obs-2345-7": {"resourceType": "OperationOutcome", "issue": []}})
    mapped = _map({**_only(None), "conditions": None})
    assert mapped.encounter.observations == [] and mapped.encounter.age == 51
    with pytest.raises(PrefetchMissing):
        encounter_from_prefetch("example", None, MODEL, at=AT)


def test_when_a_resource_is_about_another_patient_then_the_call_is_refused():
    with pytest.raises(PrefetchInvalid) as caught:
        _map(patient="someone-else")
    assert caught.value.field == "prefetch.patient.id"
    foreign = _cds.example("Observation-f001.json")  # as published: about Patient/f001
    with pytest.raises(PrefetchInvalid) as caught:
        _map(_only([foreign]))
    assert caught.value.field == f"{A1C}.entry[0].resource.subject"


def test_when_a_resource_breaks_the_fhir_model_then_the_place_is_named_and_the_value_is_not():
    bad = _cds.example("Observation-bmi.json")
    bad["valueQuantity"]["value"] = "sixteen-point-two"
    with pytest.raises(PrefetchInvalid) as caught:
        _map(_only([bad]))
    assert caught.value.field == f"{A1C}.entry[0].resource.valueQuantity.value"
    assert "sixteen" not in str(caught.value)
    patient = _cds.example("Patient-example.json")
    patient["birthDate"] = "25/12/1974"
    with pytest.raises(PrefetchInvalid) as caught:
        _map({**_cds.prefetch(), "patient": patient})
    assert caught.value.field.startswith("prefetch.patient.birthDate") and "1974" not in str(caught.value)


def test_when_gender_is_a_level_the_model_knows_then_it_becomes_sex_else_unknown():
    male = _map(model={**MODEL, "sex_levels": ["F", "M"]})
    assert male.encounter.sex == "M"
    other = _cds.example("Patient-example.json")
    other["gender"] = "other"
    mapped = _map({**_cds.prefetch(), "patient": other}, model={**MODEL, "sex_levels": ["F", "M"]})
    assert mapped.encounter.sex is None and "prefetch.patient.gender" in dict(mapped.ignored)


def test_when_a_service_field_is_refused_then_it_is_named_as_its_place_in_the_prefetch():
    mapped = _map()
    assert mapped.fhir_field("encounters[0].observations[2].value") == \
        "prefetch.obs-85354-9.entry[0].resource.component[0].valueQuantity.value"
    assert mapped.fhir_field("encounters[0].observations[1].unit") == \
        "prefetch.obs-2085-9.entry[0].resource.valueQuantity.code"
    assert mapped.fhir_field("encounters[0].age") == "prefetch.patient"


def _diagnosis(p, flag, *, out=False):
    return {"encounter_ref": None, "probability": p, "flag": flag, "threshold": 0.3,
            "model": {"name": MODEL["name"], "version": 1, "model_version": MODEL["model_version"]},
            "checks": {"types": "passed", "training_profile": "flagged" if out else "passed"},
            "out_of_profile": out, "out_of_profile_reasons": [{"feature": "obs_39156_5_last", "name": "BMI — last",
                                                               "side": "below", "bound": 18.0}] if out else [],
            "top_features": [{"feature": "obs_4548_4_last", "name": "HbA1c — last", "contribution": 0.8}]}


@pytest.mark.parametrize(("p", "flag", "indicator"), [(0.1, False, "info"), (0.5, True, "warning"),
                                                      (0.85, True, "critical")])
def test_when_a_diagnosis_becomes_a_card_then_its_indicator_follows_flag_and_probability(p, flag, indicator):
    settings = load_settings()
    card = cards_for(_diagnosis(p, flag), _map(), settings, with_risk_assessment=False)[0]
    assert card["indicator"] == indicator and len(card["summary"]) < 140
    assert f"{round(100 * p)} %" in card["summary"] and "suggestions" not in card
    assert card["source"]["label"].startswith("medguard") and card["uuid"]
    assert "HbA1c — last" in card["detail"] and "threshold 30.0 %" in card["detail"]


def test_when_asked_then_the_card_suggests_a_valid_fhir_risk_assessment():
    settings = load_settings()
    mapped = _map()
    card = cards_for(_diagnosis(0.42, True, out=True), mapped, settings, with_risk_assessment=True)[0]
    action = card["suggestions"][0]["actions"][0]
    assert card["selectionBehavior"] == "at-most-one" and action["type"] == "create"
    resource = RiskAssessment.model_validate(action["resource"])
    assert resource.status == "final" and resource.subject.reference == "Patient/example"
    assert float(resource.prediction[0].probabilityDecimal) == 0.42
    assert resource.prediction[0].outcome.text == "t2d within 1y"
    assert [b.reference for b in resource.basis] == mapped.basis()
    assert resource.occurrenceDateTime == AT and "BMI" in resource.note[0].text
    assert "Outside the training profile" in card["detail"] and "(inputs outside" in card["summary"]


def test_when_the_ehr_data_holds_markdown_then_the_detail_escapes_it():
    rows = [_obs("4548-4", 7.0, "%", "2026-01-01", oid="x")]
    rows[0]["code"]["coding"][0]["display"] = "[click](https://evil.example)"
    mapped = _map(_only(rows))
    detail = cards_for(_diagnosis(0.5, True), mapped, load_settings(), with_risk_assessment=False)[0]["detail"]
    assert "[click](https" not in detail and "\\[click\\]\\(https" in detail


# with the real scoring service ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = tmp_path_factory.mktemp("cds-fhir")
    ring = LocalKeyring.init(home / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    settings = load_settings(home=home, key_provider="keyring", keyring={"path": ring.path})
    register_model(settings, ring)
    return DiagnosisService(settings, provider=ring)


@pytest.mark.integration
def test_when_units_differ_then_the_fhir_result_scores_as_the_same_value_in_the_models_unit(service):
    mapped = encounter_from_prefetch("example", _cds.prefetch(), service.model_info(), at=AT)
    from_fhir = service.diagnose([mapped.encounter])[0]
    assert from_fhir["checks"]["units"] == "passed"

    def with_hdl(value, unit):
        return mapped.encounter.model_copy(update={"observations": [
            o if o.code != "2085-9" else ObservationIn(code="2085-9", value=value, unit=unit, effective=o.effective)
            for o in mapped.encounter.observations]})

    # HDL 1.3 mmol/L is 1.3 × 38.67 = 50.27 mg/dL: the same answer as the value converted by hand...
    by_hand = service.diagnose([with_hdl(1.3 * 38.67, "mg/dL")])[0]
    assert by_hand["probability"] == pytest.approx(from_fhir["probability"], abs=1e-9)
    # ...and read as mg/dL it would be refused (below the 5 mg/dL hard limit): the unit was not ignored.
    with pytest.raises(PayloadInvalid):
        service.diagnose([with_hdl(1.3, "mg/dL")])


@pytest.mark.integration
def test_when_results_come_in_any_order_then_their_times_order_them_for_the_model(service):
    def scored(rows):
        mapped = encounter_from_prefetch("example", _only(rows),
                                         service.model_info(), at=AT)
        return service.diagnose([mapped.encounter])[0]["probability"]

    new, old = _obs("4548-4", 9.5, "%", "2026-06-01", oid="new"), _obs("4548-4", 5.2, "%", "2023-01-01", oid="old")
    assert scored([new, old]) == scored([old, new])
    # The same as the service's own payload with both times: the mapping kept what orders them.
    by_hand = EncounterIn(age=51, observations=[
        ObservationIn(code="4548-4", value=5.2, unit="%", effective=datetime(2023, 1, 1, tzinfo=UTC)),
        ObservationIn(code="4548-4", value=9.5, unit="%", effective=datetime(2026, 6, 1, tzinfo=UTC))])
    assert service.diagnose([by_hand])[0]["probability"] == scored([new, old])


def test_when_a_value_cannot_be_a_number_or_the_unit_is_overlong_then_400_not_a_crash():
    huge = _cds.example("Observation-bmi.json")
    huge["valueQuantity"]["value"] = float("inf")
    with pytest.raises(PrefetchInvalid) as caught:
        _map(_only([huge]))
    assert caught.value.field.startswith(f"{A1C}.entry[0].resource.valueQuantity")
    long_unit = _cds.example("Observation-bmi.json")
    long_unit["valueQuantity"]["code"] = "k" * 40
    with pytest.raises(PrefetchInvalid) as caught:
        _map(_only([long_unit]))
    assert caught.value.field == f"{A1C}.entry[0].resource.valueQuantity"


def test_when_two_searches_return_the_same_result_then_it_counts_once():
    panel = _cds.example("Observation-blood-pressure.json")
    # A server that matches component codes returns the panel for the systolic search too.
    mapped = _map({**_only(None), "obs-8480-6": _cds.searchset([panel]), "obs-85354-9": _cds.searchset([panel])})
    assert sorted(o.code for o in mapped.encounter.observations) == ["8462-4", "8480-6"]
