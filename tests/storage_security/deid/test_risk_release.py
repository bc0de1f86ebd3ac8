"""The release gate: tables published together are k-anonymous per patient when joined on the pseudonym.

The attack of issue 17: each table met k on its own, but joined on the pseudonym the age band of
``patients``, the facility of ``encounters`` and the count of a patient's encounters left patients unique. The
checks here join the published tables themselves and count classes with their own code, not the gate's.
"""

from __future__ import annotations

import bisect
import itertools

import pandas as pd
import pytest

from storage_security.deid.risk import enforce_release, release_vectors

K = 5
QIS = {"patients": ["age_band", "sex", "facility_id"], "encounters": ["facility_id", "encounter_type"]}
LADDERS = {"age_band": [5, 10, 20, "*"], "sex": ["*"], "facility_id": ["*"], "encounter_type": ["*"]}


BAND_EDGES = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


def band_of(rows: int) -> int:
    """The band (0, 1, 2-4, 5-9, 10-19, 20-49…, here as the index of its lower edge) an attacker is assumed to know a
    patient's count of rows in a table with no quasi-identifier to within."""
    return bisect.bisect_right(BAND_EDGES, rows) - 1


def patient_view(frame: pd.DataFrame, qis: list[str], entity: str = "patient_pseudonym") -> pd.DataFrame:
    """What an attacker reads per patient from one table: its quasi-identifiers (the set of their row tuples when a
    patient has several rows) and how many rows the patient has; from a table with none listed, the patient's count
    of rows to within a band (the join keeps only the patients in it)."""
    linked = frame[frame[entity].notna()].astype({c: str for c in qis})
    if linked.empty:
        return pd.DataFrame()
    grouped = linked.groupby(entity)
    view = pd.DataFrame({"rows": grouped.size()}) if qis else pd.DataFrame({"band": grouped.size().map(band_of)})
    for c in qis:
        view[c] = grouped[c].agg(lambda v: "|".join(sorted(set(v))))
    if qis:
        tuples = linked[qis].agg("\x1f".join, axis=1)
        view["tuples"] = tuples.groupby(linked[entity]).agg(lambda v: "|".join(sorted(set(v))))
    return view


def smallest_joined_class(left: pd.DataFrame, right: pd.DataFrame, qis_left: list[str],
                          qis_right: list[str]) -> tuple[int, int]:
    """(smallest class, patients) when ``left`` and ``right`` are joined on the pseudonym."""
    joined = patient_view(left, qis_left).join(patient_view(right, qis_right), how="inner", lsuffix="_l",
                                                rsuffix="_r")
    if joined.empty:
        return (10**9, 0)
    return int(joined.groupby(list(joined.columns)).size().min()), len(joined)


def attack_frames(patients: int = 60) -> dict[str, pd.DataFrame]:
    """Each table k-anonymous alone (facility withheld in patients, facilities shared in encounters), unique joined."""
    pseudonyms = [f"p{i:03d}" for i in range(patients)]
    people = pd.DataFrame({"patient_pseudonym": pseudonyms,
                           "age_band": [f"{40 + 5 * (i % 4)}-{44 + 5 * (i % 4)}" for i in range(patients)],
                           "sex": ["F", "M"] * (patients // 2), "facility_id": "*"})
    rows = []
    for i, p in enumerate(pseudonyms):
        for j in range(1 + i % 7):
            rows.append({"patient_pseudonym": p, "facility_id": f"FAC-{(i // 7 + j) % 4}",
                         "encounter_type": ["AMB", "EMER", "IMP"][(i + j) % 3]})
    return {"patients": people, "encounters": pd.DataFrame(rows)}


def test_when_tables_are_k_anonymous_alone_but_unique_joined_then_the_release_gate_fixes_the_join():
    tables = attack_frames()
    before, _ = smallest_joined_class(tables["patients"], tables["encounters"], QIS["patients"], QIS["encounters"])
    assert before < K  # the attack works on the tables as they were
    released, report = enforce_release(tables, QIS, k=K, ladders=LADDERS, max_suppression=0.2)
    after, patients = smallest_joined_class(released["patients"], released["encounters"], QIS["patients"],
                                            QIS["encounters"])
    assert after >= K and patients > 0
    assert report.k >= K
    # every table's rows of a suppressed patient are gone, not only one table's
    kept = set(released["patients"]["patient_pseudonym"])
    assert set(released["encounters"]["patient_pseudonym"]) <= kept
    assert report.suppressed_patients == 60 - len(kept)


def test_when_the_issue_attack_is_replayed_then_no_patient_is_unique():
    released, _ = enforce_release(attack_frames(), QIS, k=K, ladders=LADDERS, max_suppression=0.2)
    enc = released["encounters"].groupby("patient_pseudonym").agg(
        facilities=("facility_id", lambda v: "|".join(sorted(set(v)))), count=("facility_id", "size"))
    joined = released["patients"].set_index("patient_pseudonym")[["age_band"]].join(enc, how="inner")
    classes = joined.groupby(["age_band", "facilities", "count"]).size()
    assert classes.min() >= K
    assert len(classes[classes == 1]) == 0


def test_when_the_release_is_already_k_anonymous_then_no_table_changes():
    people = pd.DataFrame({"patient_pseudonym": [f"p{i}" for i in range(20)], "age_band": "40-44", "sex": "F",
                           "facility_id": "*"})
    visits = pd.DataFrame({"patient_pseudonym": [f"p{i}" for i in range(20)], "facility_id": "FAC-1",
                           "encounter_type": "AMB"})
    tables = {"patients": people, "encounters": visits}
    released, report = enforce_release(tables, QIS, k=K, ladders=LADDERS)
    assert all(released[t] is tables[t] for t in tables)
    assert report.suppressed_patients == 0 and not report.generalization


def test_when_a_table_has_no_pseudonym_then_the_release_gate_leaves_it_alone():
    research = pd.DataFrame({"age": range(30), "chol": range(30)})
    tables = {**attack_frames(), "heart": research}
    released, _ = enforce_release(tables, {**QIS, "heart": ["age"]}, k=K, ladders=LADDERS, max_suppression=0.2)
    assert released["heart"] is research


def test_when_the_ladders_run_out_then_small_classes_are_suppressed_past_the_budget():
    # counts of rows cannot be generalised: patients with a unique number of encounters must go
    tables = attack_frames(12)
    released, report = enforce_release(tables, QIS, k=K, ladders=LADDERS, max_suppression=0.0)
    assert report.over_budget and report.suppressed_patients > 0
    vectors = release_vectors(released, QIS)
    assert vectors.empty or vectors.groupby(list(vectors.columns)).size().min() >= K


@pytest.mark.parametrize("patients", [40, 200])
def test_when_every_pair_is_joined_after_the_gate_then_no_class_is_smaller_than_k(patients):
    tables = attack_frames(patients)
    tables["outcomes"] = pd.DataFrame({"patient_pseudonym": tables["patients"]["patient_pseudonym"],
                                       "index_year": [2020 + i % 3 for i in range(patients)]})
    qis = {**QIS, "outcomes": ["index_year"]}
    released, _ = enforce_release(tables, qis, k=K, ladders={**LADDERS, "index_year": ["*"]})
    for a, b in itertools.combinations(released, 2):
        smallest, _ = smallest_joined_class(released[a], released[b], qis[a], qis[b])
        assert smallest >= K, (a, b)


def observation_frames(patients: int = 40) -> dict[str, pd.DataFrame]:
    """Patients alike in every quasi-identifier and encounter, told apart only by how many observations they have:
    most have 3, five have 1, 7, 15, 30 and 70 (one alone in each band)."""
    pseudonyms = [f"p{i:03d}" for i in range(patients)]
    people = pd.DataFrame({"patient_pseudonym": pseudonyms, "age_band": "40-44", "sex": "F", "facility_id": "FAC-1"})
    visits = pd.DataFrame({"patient_pseudonym": pseudonyms, "facility_id": "FAC-1", "encounter_type": "AMB"})
    counts = [1, 7, 15, 30, 70] + [3] * (patients - 5)
    observations = pd.DataFrame({"patient_pseudonym": [p for p, n in zip(pseudonyms, counts, strict=True)
                                                       for _ in range(n)], "value": 1.0})
    return {"patients": people, "encounters": visits, "observations": observations}


def test_when_observation_counts_single_out_patients_then_the_release_gate_withholds_them():
    tables = observation_frames()
    before, _ = smallest_joined_class(tables["patients"], tables["observations"], QIS["patients"], [])
    assert before == 1  # joined on the pseudonym, a count of observations alone in its band singles a patient out
    released, report = enforce_release(tables, QIS, k=K, ladders=LADDERS)
    for a, b in itertools.combinations(released, 2):
        smallest, patients = smallest_joined_class(released[a], released[b], QIS.get(a, []), QIS.get(b, []))
        assert smallest >= K and patients == 35, (a, b)
    counts = released["observations"].groupby("patient_pseudonym").size()
    assert set(counts) == {3} and report.suppressed_patients == 5


def test_when_observation_counts_share_a_band_then_the_release_gate_keeps_every_patient():
    # 3 and 4 observations are one band (2-4): the gate does not suppress on exact counts of unlisted tables
    tables = observation_frames()
    tables["observations"] = pd.DataFrame({"patient_pseudonym": [f"p{i:03d}" for i in range(40)
                                                                 for _ in range(3 + i % 2)], "value": 1.0})
    released, report = enforce_release(tables, QIS, k=K, ladders=LADDERS)
    assert report.suppressed_patients == 0 and released["observations"] is tables["observations"]
