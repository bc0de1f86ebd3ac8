"""Small cells: a result computed from de-identified data never shows a group of fewer than k patients.

Queried through the gateway as the analyst ``ann`` (research purpose) over the access world's de-identified tables:
30 patients, 24 of them consenting, age bands of 4-5 consenting patients, zip3 values of one patient each.
"""

from __future__ import annotations

import pytest

from pipeline.errors import AccessDeniedError

K = 5


def _rows(world, sql: str) -> list[dict]:
    return world.gateway.query(world.session("ann"), sql).table.to_pylist()


def _consenting(world) -> list[tuple[int, dict]]:
    return [(i, p) for i, p in enumerate(world.patients) if p["consent_research"]]


def test_when_an_analyst_asks_for_groups_of_one_then_nothing_comes_back(world):
    assert _rows(world, "SELECT zip3, count(*) AS n FROM deidentified.patients GROUP BY zip3 "
                        "HAVING count(*) = 1") == []


def test_when_groups_of_one_sit_in_a_subquery_then_the_outer_query_reads_nothing(world):
    assert _rows(world, "SELECT z FROM (SELECT zip3 AS z, count(*) AS n FROM deidentified.patients GROUP BY zip3 "
                        "HAVING count(*) = 1) AS t") == []
    assert _rows(world, "WITH u AS (SELECT zip3, count(*) AS n FROM deidentified.patients GROUP BY zip3) "
                        "SELECT count(*) AS uniques FROM u WHERE n = 1") == []


def test_when_groups_are_large_enough_then_they_come_back_with_their_true_counts(world):
    got = _rows(world, "SELECT facility_id, count(*) AS n FROM deidentified.patients GROUP BY 1 ORDER BY 1")
    expected: dict[str, int] = {}
    for _, p in _consenting(world):
        expected[p["facility_id"]] = expected.get(p["facility_id"], 0) + 1
    assert got == [{"facility_id": f, "n": n} for f, n in sorted(expected.items()) if n >= K]
    assert got  # 8 consenting patients per facility: none is suppressed


def test_when_some_groups_are_small_then_only_those_are_left_out(world):
    got = _rows(world, "SELECT age_band, sex, count(*) AS n FROM deidentified.patients GROUP BY 1, 2 ORDER BY 1, 2")
    expected: dict[tuple[str, str], int] = {}
    for i, p in _consenting(world):
        key = (f"{40 + (i % 5) * 5}-{44 + (i % 5) * 5}", p["sex"])
        expected[key] = expected.get(key, 0) + 1
    assert got == [{"age_band": a, "sex": s, "n": n} for (a, s), n in sorted(expected.items()) if n >= K]
    assert any(n < K for n in expected.values())  # the case is real: some cells were small


def test_when_a_count_is_filtered_down_to_one_patient_then_it_is_suppressed(world):
    one = world.patients[1]["zip"][:3]
    assert _rows(world, f"SELECT count(*) AS n FROM deidentified.patients WHERE zip3 = '{one}'") == []  # noqa: S608
    assert _rows(world, "SELECT count(*) AS n FROM deidentified.patients") == [{"n": len(_consenting(world))}]


def test_when_rows_of_one_patient_are_counted_then_k_counts_patients_not_rows(world):
    # every patient has two encounters in raw but one condition row here; counting rows of one patient twice over a
    # join must not make a cell of one patient look like two
    pseudonym = world.pseudonyms[world.patients[1]["patient_id"]]
    assert _rows(world, "SELECT c.icd10_code, count(*) AS n FROM deidentified.conditions c "  # noqa: S608
                        "JOIN deidentified.conditions d ON c.patient_pseudonym = d.patient_pseudonym "
                        f"WHERE c.patient_pseudonym = '{pseudonym}' GROUP BY 1") == []


def test_when_a_window_function_runs_over_deidentified_data_then_the_query_is_refused(world):
    with pytest.raises(AccessDeniedError, match="window functions"):
        _rows(world, "SELECT zip3, count(*) OVER (PARTITION BY zip3) AS n FROM deidentified.patients")


def test_when_an_analyst_reads_rows_then_the_release_comes_back_as_published(world):
    # row-level results are the release itself (k-anonymous by the risk gate): not suppressed
    got = _rows(world, "SELECT age_band FROM deidentified.patients")
    assert len(got) == len(_consenting(world))
