"""DiagnosisService in process: the current signed model verified once per version and a promotion picked up
without a restart; payload checks (units, hard limits, plausibility, codes) and the out-of-profile policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from access.api.scoring import DiagnosisService, EncounterIn, ModelUnavailable, OutOfProfile, PayloadInvalid
from analytics.registry import ModelRegistry
from pipeline.lake import Lake
from pipeline.settings import Settings, load_settings
from storage_security.audit.log import AuditLog
from tests.access.api._model import MODEL_NAME, register_model

# Each test registers a signed model in a real lake (Delta audit commits): seconds, not milliseconds.
pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, keyring: Any, **api: Any) -> Settings:
    return load_settings(home=tmp_path / "home", key_provider="keyring", keyring={"path": keyring.path},
                         api=api)


@pytest.fixture
def service(tmp_path: Path, keyring: Any) -> DiagnosisService:
    settings = _settings(tmp_path, keyring)
    register_model(settings, keyring)
    return DiagnosisService(settings, provider=keyring)


def _enc(*observations: tuple[str, float, str | None], **kwargs: Any) -> EncounterIn:
    return EncounterIn(age=kwargs.pop("age", 55), observations=[{"code": c, "value": v, "unit": u}
                                                                 for c, v, u in observations], **kwargs)


def _loads(settings: Settings, keyring: Any) -> int:
    events = AuditLog(Lake(settings), keyring).events()
    return sum(1 for r in events if "verified" in (r.event.reason or "") and str(r.event.decision) == "allow")


def test_when_many_diagnoses_run_then_the_model_is_verified_once_and_a_promotion_is_picked_up(tmp_path, keyring):
    settings = _settings(tmp_path, keyring)
    register_model(settings, keyring)
    service = DiagnosisService(settings, provider=keyring)
    enc = _enc(("4548-4", 6.8, "%"))
    first = [service.diagnose([enc])[0] for _ in range(5)]
    assert {d["model"]["model_version"] for d in first} == {f"{MODEL_NAME}@v1"}
    assert _loads(settings, keyring) == 1
    register_model(settings, keyring, seed=8)  # registers v2 and promotes it: no restart
    assert service.diagnose([enc])[0]["model"]["model_version"] == f"{MODEL_NAME}@v2"
    assert service.model_info()["version"] == 2 and _loads(settings, keyring) == 2


def test_when_no_model_is_current_then_the_service_is_unavailable_and_not_ready(tmp_path, keyring):
    settings = _settings(tmp_path, keyring)
    service = DiagnosisService(settings, provider=keyring)
    with pytest.raises(ModelUnavailable):
        service.model_info()
    assert service.ready()[0] is False
    register_model(settings, keyring, promote=False)  # a candidate is never used
    with pytest.raises(ModelUnavailable):
        service.diagnose([_enc()])
    ModelRegistry(settings, keyring).promote(MODEL_NAME, 1, reason="test", principal="svc:test")
    assert service.ready() == (True, f"model {MODEL_NAME}@v1 verified")


def test_when_the_model_file_is_tampered_with_then_a_new_service_refuses_it(tmp_path, keyring):
    settings = _settings(tmp_path, keyring)
    register_model(settings, keyring)
    bundle = settings.home / "models" / MODEL_NAME / "v1" / "bundle.json"
    bundle.write_text(bundle.read_text().replace('"threshold": 0.3', '"threshold": 0.9'))
    with pytest.raises(ModelUnavailable, match="does not match its signed SHA-256"):
        DiagnosisService(settings, provider=keyring).diagnose([_enc()])


@pytest.mark.parametrize(("same", "converted"), [
    (("2345-7", 126, "mg/dL"), ("2345-7", 126 / 18.016, "mmol/L")),
    (("4548-4", 6.5, "%"), ("4548-4", (6.5 - 2.152) / 0.09148, "mmol/mol")),
    (("2093-3", 200, "mg/dL"), ("2093-3", 200 / 38.67, "mmol/L")),
])
def test_when_a_value_comes_in_another_unit_then_it_scores_as_in_the_models_unit(service, same, converted):
    a = service.diagnose([_enc(same)])[0]["probability"]
    b = service.diagnose([_enc(converted)])[0]["probability"]
    assert a == pytest.approx(b, abs=1e-5)


def test_when_units_convert_for_hard_limits_then_pounds_and_micromoles_are_accepted_and_checked(service):
    service.diagnose([_enc(("29463-7", 180, "[lb_av]"), ("2160-0", 80, "umol/L"))])
    with pytest.raises(PayloadInvalid, match=r"observations\[0\]\.value: outside the hard limits"):
        service.diagnose([_enc(("2160-0", 2000, "umol/L"))])  # 22.6 mg/dL: above the 15 mg/dL limit


@pytest.mark.parametrize(("observations", "rule"), [
    ((("2093-3", 150, None), ("2085-9", 160, None)), "below total cholesterol"),
    ((("29463-7", 70, "kg"), ("8302-2", 175, "cm"), ("39156-5", 40, "kg/m2")), "BMI"),
    ((("8480-6", 120, None), ("8462-4", 120, None)), "below systolic"),
])
def test_when_values_are_implausible_together_then_the_encounter_is_refused(service, observations, rule):
    with pytest.raises(PayloadInvalid, match=rule) as caught:
        service.diagnose([_enc(*observations)])
    assert caught.value.field == "encounters[0].observations"


def test_when_a_condition_is_coded_in_snomed_then_it_counts_as_its_icd10_mapping(service):
    icd = service.diagnose([_enc(("4548-4", 6.0, None), conditions=[{"code": "R73.03"}])])[0]
    snomed = service.diagnose([_enc(("4548-4", 6.0, None),
                                    conditions=[{"code": "15777000", "system": "http://snomed.info/sct"}])])[0]
    none = service.diagnose([_enc(("4548-4", 6.0, None))])[0]
    assert icd["probability"] == snomed["probability"] != none["probability"]


def test_when_a_value_is_far_outside_the_training_profile_then_it_is_flagged_or_refused_per_policy(tmp_path,
                                                                                                     keyring):
    settings = _settings(tmp_path, keyring)
    register_model(settings, keyring)
    enc = _enc(("2345-7", 900, "mg/dL"))  # within the hard limits, far above anything the model saw
    flagged = DiagnosisService(settings, provider=keyring).diagnose([enc])[0]
    assert flagged["out_of_profile"] and flagged["checks"]["training_profile"] == "flagged"
    assert [r["feature"] for r in flagged["out_of_profile_reasons"]] == ["obs_2345_7_last", "obs_2345_7_mean"]
    refusing = DiagnosisService(_settings(tmp_path, keyring, out_of_profile="refuse"), provider=keyring)
    with pytest.raises(OutOfProfile, match="obs_2345_7_last") as caught:
        refusing.diagnose([enc])
    assert "900" not in str(caught.value)
    assert refusing.diagnose([_enc(("2345-7", 110, "mg/dL"))])[0]["out_of_profile"] is False


def test_when_the_service_is_pickled_then_it_refuses(service):
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(service)


def test_when_an_observation_or_condition_is_dated_in_the_future_then_it_is_refused(tmp_path, keyring):
    settings = _settings(tmp_path, keyring)
    register_model(settings, keyring)
    now = 1_796_040_000.0  # 2026-11-30 12:00 UTC
    service = DiagnosisService(settings, provider=keyring, clock=lambda: now)
    tomorrow_noon = "2026-12-01T11:00:00Z"  # within a day: clocks and zones differ
    service.diagnose([EncounterIn(observations=[{"code": "4548-4", "value": 6, "effective": tomorrow_noon}])])
    with pytest.raises(PayloadInvalid, match="must not be in the future") as caught:
        service.diagnose([EncounterIn(conditions=[{"code": "I10", "onset": "2027-03-01"}])])
    assert caught.value.field == "encounters[0].conditions[0].onset"
