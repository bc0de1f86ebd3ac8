"""Answers that say what was withheld: row filters with their counts, column masks, DESCRIBE, readable names."""

from __future__ import annotations

import pytest

from access.gateway import disclosable_count
from pipeline.errors import AccessDeniedError


def _non_consenting(world) -> int:
    return sum(not p["consent_research"] for p in world.patients)


def test_when_the_consent_filter_removes_rows_then_the_result_says_how_many_and_of_which_table(world):
    result = world.gateway.query(world.session("ann"), "SELECT sex, count(*) AS n FROM deidentified.patients "
                                                       "GROUP BY sex")
    withheld = result.withheld()
    assert withheld["row_filters"] == [{"table": "deidentified.patients", "filter": "consent",
                                        "description": "patients who consented to research only",
                                        "rows_removed": _non_consenting(world)}]
    assert f"row filter consent (patients who consented to research only) removed {_non_consenting(world)} rows " \
           "of deidentified.patients" in result.notices()


def test_when_a_filter_works_through_the_patient_link_then_its_count_is_reported_too(world):
    result = world.gateway.query(world.session("ann"), "SELECT count(*) AS n FROM deidentified.conditions")
    [note] = result.withheld()["row_filters"]
    assert (note["table"], note["rows_removed"]) == ("deidentified.conditions", _non_consenting(world))
    assert result.table.to_pylist() == [{"n": len(world.patients) - _non_consenting(world)}]


def test_when_a_clinician_reads_their_facility_then_rows_of_other_facilities_are_counted_as_removed(world):
    result = world.gateway.query(world.session("cleo"), "SELECT facility_id FROM raw.patients")
    [note] = result.withheld()["row_filters"]
    others = sum(p["facility_id"] != "F2" for p in world.patients)
    assert note == {"table": "raw.patients", "filter": "facility", "description": "rows of facility F2 only",
                    "rows_removed": others}


def test_when_a_column_is_masked_then_the_result_names_its_mask_per_table_and_per_output_column(world):
    result = world.gateway.query(world.session("ann"), "SELECT sex, ssn AS hidden FROM deidentified.patients")
    assert result.withheld()["masks"] == {"deidentified.patients": {"ssn": "null"}}
    assert result.column_masks == {"hidden": "null"}
    assert "column ssn of deidentified.patients is masked (null)" in result.notices()


@pytest.mark.parametrize(("removed", "row_filter", "expected"), [
    (0, "consent", 0), (4, "consent", None), (5, "consent", 5), (482, "facility", 482), (482, "patient", None)])
def test_when_a_count_could_single_out_patients_then_it_is_withheld(removed, row_filter, expected):
    assert disclosable_count(removed, row_filter, k=5)[0] == expected
    assert disclosable_count(482, "consent", k=5, break_glass=True)[0] is None


def test_when_unaliased_aggregates_are_selected_then_their_names_are_readable(world):
    result = world.gateway.query(world.session("ann"), "SELECT sex, count(*), count(DISTINCT age_band), "
                                                       "min(age_band) FROM deidentified.patients GROUP BY sex")
    assert result.table.column_names == ["sex", "count", "count_distinct_age_band", "min_age_band"]


def test_when_describe_is_asked_then_only_visible_columns_come_back_with_type_class_and_mask(world):
    columns = world.gateway.describe(world.session("ann"), "deidentified.patients")
    by_name = {c["name"]: c for c in columns}
    assert "ssn" not in by_name  # masked to null for analysts: not shown at all
    assert by_name["sex"]["mask"] == "plaintext" and by_name["sex"]["type"] == "string"
    assert set(by_name["sex"]) == {"name", "type", "class", "mask"}
    clinician = {c["name"]: c for c in world.gateway.describe(world.session("dan"), "raw.patients")}
    assert clinician["zip"]["mask"] == "masked" and "ssn" not in clinician


def test_when_describe_goes_through_a_query_then_it_returns_the_same_as_a_table(world):
    session = world.session("ann")
    result = world.gateway.query(session, "DESCRIBE deidentified.patients")
    assert result.table.column_names == ["column_name", "type", "class", "mask"]
    assert [r["column_name"] for r in result.table.to_pylist()] == \
        [c["name"] for c in world.gateway.describe(session, "deidentified.patients")]


@pytest.mark.parametrize(("sql", "reason"), [("DESCRIBE raw.patients", "no rule grants analyst read on raw.patients"),
                                             ("DESCRIBE deidentified.nothing", "no table deidentified.nothing"),
                                             ("DESCRIBE SELECT 1", "DESCRIBE takes one table")])
def test_when_describe_names_a_refused_table_then_it_is_refused(world, sql, reason):
    with pytest.raises(AccessDeniedError, match=reason):
        world.gateway.query(world.session("ann"), sql)
