"""Policies as data: validation on load, the role x zone x column class x action matrix, and the decision rules."""

from __future__ import annotations

import csv
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

import access
from access.policy import DEFAULT_PURPOSES, Action, ColumnClass, Mask, PolicyEngine, load_policy
from access.principals import Principal, Role
from pipeline.errors import SettingsError
from pipeline.lake import Zone
from storage_security.audit.log import AuditAction, AuditLog

MATRIX = Path(__file__).with_name("policy_matrix.csv")


def _expected_table() -> list[dict[str, str]]:
    lines = [line for line in MATRIX.read_text().splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


def _expected(role: str, zone: str, klass: str, action: str) -> str:
    for row in _expected_table():
        if all(row[k] == "*" or value in row[k].split("|")
               for k, value in (("role", role), ("zone", zone), ("column_class", klass), ("action", action))):
            return row["expected"]
    raise AssertionError(f"the matrix has no line for {role} {zone} {klass} {action}")


def _principal(role: Role) -> Principal:
    return Principal(f"p-{role.value.replace('_', '-')}", role, facility="F1", purposes=DEFAULT_PURPOSES[role])


CASES = list(itertools.product(Role, Zone, ColumnClass, Action))


def _outcome(engine: PolicyEngine, role: Role, zone: Zone, klass: ColumnClass, action: Action) -> str:
    column = f"c_{klass.value}"
    decision = engine.evaluate(_principal(role), action, f"{zone.value}.matrix_table", [column],
                               column_classes={column: klass.value})
    if not decision.allowed:
        return "deny"
    if action in (Action.READ, Action.DECRYPT):
        return f"allow:{decision.masks[column].value}"
    return "allow"


def test_when_every_role_zone_class_action_is_decided_then_outcomes_match_the_expected_table():
    engine = PolicyEngine(load_policy())
    outcomes = {case: _outcome(engine, *case) for case in CASES}
    expected = {case: _expected(*(v.value for v in case)) for case in CASES}
    unexpected_allows = [c for c in CASES if outcomes[c] != "deny" and expected[c] == "deny"]
    assert unexpected_allows == []
    assert {c: outcomes[c] for c in CASES if outcomes[c] != expected[c]} == {}
    assert len(CASES) == 6 * 5 * 4 * 4  # roles x zones x classes x actions
    # The table must grant something to each role, or the matrix would pass by denying everything.
    assert {c[0] for c in CASES if outcomes[c] != "deny"} == set(Role)


@pytest.mark.parametrize(("role", "table", "filters"), [
    (Role.ANALYST, "deidentified.patients", ("consent",)),
    (Role.CLINICIAN, "raw.patients", ("facility",)),
    (Role.ML_PIPELINE, "deidentified.patients", ("consent",)),
    (Role.DATA_ENGINEER, "raw.patients", ()),
])
def test_when_a_read_is_allowed_then_the_rules_row_filters_come_with_it(role, table, filters):
    decision = PolicyEngine(load_policy()).evaluate(_principal(role), "read", table, ["sex"])
    assert decision.allowed and decision.row_filters == filters


def test_when_a_clinician_has_no_facility_then_a_facility_filtered_read_is_denied():
    nobody = Principal("nofac", Role.CLINICIAN, purposes=("treatment",))
    decision = PolicyEngine(load_policy()).evaluate(nobody, "read", "raw.patients", ["sex"])
    assert not decision.allowed and "facility" in decision.reason


@pytest.mark.parametrize(("purpose", "allowed"), [("research", True), ("marketing", False), ("treatment", False)])
def test_when_the_purpose_is_not_permitted_then_the_read_is_denied(purpose, allowed):
    analyst = Principal("ann", Role.ANALYST, purposes=("research", "marketing", "treatment"))
    decision = PolicyEngine(load_policy()).evaluate(analyst, "read", "deidentified.patients", ["sex"],
                                                    purpose=purpose)
    assert decision.allowed is allowed
    if not allowed:
        assert "purpose" in decision.reason


def test_when_the_principal_does_not_hold_the_purpose_then_the_read_is_denied():
    analyst = Principal("ann", Role.ANALYST, purposes=("quality_improvement",))
    decision = PolicyEngine(load_policy()).evaluate(analyst, "read", "deidentified.patients", ["sex"],
                                                    purpose="research")
    assert not decision.allowed


def _policy_with(tmp_path: Path, extra_rules: list[dict], *, keep: bool = True) -> Path:
    data = yaml.safe_load((Path(access.__file__).parent / "policies" / "default.yaml").read_text())
    data["rules"] = ([*data["rules"]] if keep else []) + extra_rules
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_when_two_rules_match_then_the_most_restrictive_mask_and_all_filters_win(tmp_path):
    narrow = {"id": "analyst-no-zip3", "roles": ["analyst"], "zones": ["deidentified"], "tables": ["patients"],
              "actions": ["read"], "purposes": ["research"], "columns": {"zip3": "masked"},
              "masks": {"quasi_identifier": "plaintext", "sensitive": "plaintext"}, "row_filters": ["facility"]}
    engine = PolicyEngine(load_policy(_policy_with(tmp_path, [narrow])))
    analyst = Principal("ann", Role.ANALYST, facility="F1", purposes=("research",))
    decision = engine.evaluate(analyst, "read", "deidentified.patients", ["zip3", "sex", "ssn"])
    assert decision.masks == {"zip3": Mask.MASKED, "sex": Mask.PLAINTEXT, "ssn": Mask.NULL}
    assert set(decision.row_filters) == {"consent", "facility"}
    other = engine.evaluate(analyst, "read", "deidentified.conditions", ["clinical_status"])
    assert other.masks == {"clinical_status": Mask.PLAINTEXT} and other.row_filters == ("consent",)


def test_when_a_deny_rule_matches_then_it_beats_an_allow(tmp_path):
    deny = {"id": "no-notes", "effect": "deny", "roles": ["analyst"], "zones": ["deidentified"],
            "tables": ["notes"], "actions": ["read"]}
    engine = PolicyEngine(load_policy(_policy_with(tmp_path, [deny])))
    analyst = Principal("ann", Role.ANALYST, purposes=("research",))
    assert not engine.evaluate(analyst, "read", "deidentified.notes", ["note_id"]).allowed
    assert engine.evaluate(analyst, "read", "deidentified.patients", ["sex"]).allowed


@pytest.mark.parametrize(("hour", "allowed"), [(6, False), (8, True), (17, True), (18, False)])
def test_when_a_rule_has_hours_then_it_applies_only_inside_them(tmp_path, hour, allowed):
    rule = {"id": "daytime", "roles": ["auditor"], "zones": ["predictions"], "actions": ["read"],
            "hours": [8, 18], "masks": {"sensitive": "plaintext"}}
    engine = PolicyEngine(load_policy(_policy_with(tmp_path, [rule])),
                          clock=lambda: datetime(2026, 3, 2, hour, 30, tzinfo=UTC))
    auditor = Principal("otto", Role.AUDITOR)
    decision = engine.evaluate(auditor, "read", "predictions.diagnoses", ["probability"])
    assert decision.allowed is allowed
    if not allowed:
        assert "outside the time" in decision.reason


def test_when_a_rule_has_expired_then_it_no_longer_grants(tmp_path):
    rule = {"id": "study-2025", "roles": ["auditor"], "zones": ["predictions"], "actions": ["read"],
            "valid_until": "2025-12-31", "masks": {"sensitive": "plaintext"}}
    engine = PolicyEngine(load_policy(_policy_with(tmp_path, [rule])),
                          clock=lambda: datetime(2026, 1, 1, 10, tzinfo=UTC))
    assert not engine.evaluate(Principal("otto", Role.AUDITOR), "read", "predictions.scores", ["score"]).allowed


@pytest.mark.parametrize(("reason", "allowed"), [
    (None, False), ("because", False), ("patient unconscious in ED, no consent possible", True)])
def test_when_break_glass_is_asked_then_it_needs_a_written_reason(reason, allowed):
    clinician = Principal("cleo", Role.CLINICIAN, facility="F1", purposes=("treatment", "emergency"))
    engine = PolicyEngine(load_policy())
    decision = engine.evaluate(clinician, "read", "raw.patients", ["ssn"], purpose="emergency",
                               break_glass_reason=reason)
    assert decision.allowed is allowed
    if allowed:
        assert decision.break_glass and decision.row_filters == ()


def test_when_break_glass_is_granted_then_it_is_audited_as_break_glass_with_the_reason(lake, keyring):
    audit = AuditLog(lake, keyring)
    engine = PolicyEngine(load_policy(), audit=audit)
    clinician = Principal("cleo", Role.CLINICIAN, facility="F1", purposes=("treatment", "emergency"))
    engine.decide(clinician, "read", "raw.patients", ["ssn"], purpose="emergency",
                  break_glass_reason="patient unconscious in ED, no consent possible")
    engine.decide(clinician, "read", "deidentified.patients", ["ssn"], purpose="treatment")
    first, second = (r.event for r in audit.events())
    assert first.action == AuditAction.BREAK_GLASS and first.decision == "allow"
    assert "patient unconscious" in first.reason
    assert second.action == AuditAction.POLICY_DECISION and second.decision == "deny"
    assert second.reason.startswith("no rule grants clinician read")


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 0}, "version"),
    ({"rules": [{"id": "x", "roles": ["wizard"], "zones": ["raw"], "actions": ["read"]}]}, "rule 'x' roles"),
    ({"rules": [{"id": "x", "roles": ["analyst"], "zones": ["lake"], "actions": ["read"]}]}, "rule 'x' zones"),
    ({"rules": [{"id": "x", "roles": ["analyst"], "zones": ["raw"], "actions": ["read"],
                 "masks": {"direct_identifier": "blur"}}]}, "rule 'x' masks"),
    ({"rules": [{"id": "x", "roles": ["analyst"], "zones": ["raw"], "actions": ["read"],
                 "row_filters": ["region"]}]}, "unknown row filters"),
    ({"rules": [{"id": "x", "roles": ["analyst"], "zones": ["raw"], "actions": ["read"], "hours": [20, 8]}]},
     "hours"),
    ({"rules": [{"id": "x", "roles": ["analyst"], "zones": ["raw"], "actions": ["read"]},
                {"id": "x", "roles": ["analyst"], "zones": ["raw"], "actions": ["read"]}]}, "unique"),
    ({"rules": [{"id": "x", "roles": ["analyst"], "zones": ["raw"], "actions": ["read"], "typo": 1}]},
     "rule 'x' typo"),
    ({"column_classes": {"quasi_identifier": ["city"]}},
     "city is quasi_identifier here but direct_identifier for raw.patients in pipeline/catalog/raw.yaml"),
    ({"tables": {"deidentified.notes": {"text": "non_sensitive"}}},
     "text is non_sensitive here but sensitive for deidentified.notes in pipeline/catalog/raw.yaml"),
    ({"column_classes": {"direct_identifier": ["ssn"]}}, "agrees with the catalog, but must not repeat it"),
])
def test_when_a_policy_file_is_invalid_then_loading_names_the_problem(tmp_path, change, message):
    data = {"version": 1, "rules": [{"id": "ok", "roles": ["analyst"], "zones": ["raw"], "actions": ["read"]}]}
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SettingsError, match="invalid policy file") as caught:
        load_policy(path)
    assert message in str(caught.value)


def test_when_a_policy_file_is_not_yaml_then_loading_says_so(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rules: [unclosed")
    with pytest.raises(SettingsError, match="not readable YAML"):
        load_policy(path)


def test_when_a_column_is_unknown_then_it_is_treated_as_a_direct_identifier():
    policy = load_policy()
    assert policy.column_class("deidentified", "patients", "mystery_column") is ColumnClass.DIRECT_IDENTIFIER
    assert policy.column_class("deidentified", "patients", "sex", {"sex": "direct_identifier"}) \
        is ColumnClass.DIRECT_IDENTIFIER
    assert policy.column_class("deidentified", "patients", "new_col", {"new_col": "sensitive"}) \
        is ColumnClass.SENSITIVE
