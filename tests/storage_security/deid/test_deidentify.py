"""Publication raw → deidentified, end to end on a generated population with its PHI sealed in the raw zone.

Every check reads the published tables back from the lake and counts for itself: it does not trust the code that
enforced k-anonymity, nor the report it wrote.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from _deid_raw import generated, load_raw, shared_detector

from pipeline.lake import CommitInfo, Lake
from storage_security.audit.log import AuditAction
from storage_security.deid.deidentify import Deidentifier, published_report
from storage_security.deid.risk import RiskGateError
from storage_security.keys.keyring import LocalKeyring
from storage_security.protected import ProtectedLake

TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes", "notes")
DIRECT = ("patient_id", "mrn", "first_name", "last_name", "ssn", "address", "phone", "email", "insurance_member_id")


@pytest.fixture(scope="module")
def published(tmp_path_factory, settings):
    root = tmp_path_factory.mktemp("deid")
    ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    lake = Lake(settings.model_copy(update={"lake_root": str(root / "lake")}))
    plake = ProtectedLake(lake, ring, principal="svc:deidentify")
    source = generated(60, 11)
    patients = pd.read_parquet(source / "patients.parquet")
    # A new extract brings two columns nobody tagged: one full of PHI, one harmless.
    extra = {"patients": {"next_of_kin": [f"{f} {la}, {p}" for f, la, p in zip(
        patients["first_name"][::-1], patients["last_name"], patients["phone"][::-1], strict=True)],
        "preferred_language": ["English", "Spanish", "English", "Polish"] * 15}}
    raw = load_raw(plake, source, TABLES, extra_columns=extra)
    # Each table's own gate, counted table by table; the release gate over all of them (which suppresses most of
    # 60 patients once their rows are counted together) is tested in test_risk_release*.py.
    deid = Deidentifier(plake, settings, detector=shared_detector(), release_gate=False)
    reports = deid.publish_all()
    out = {t: lake.read_pandas("deidentified", t) for t in TABLES}
    return {"lake": lake, "plake": plake, "raw": raw, "reports": reports, "out": out, "deid": deid}


@pytest.mark.integration
@pytest.mark.parametrize("table", TABLES)
def test_when_a_table_is_published_then_k_anonymity_holds_counted_independently(published, settings, table):
    report = published_report(published["lake"], table)
    frame = published["out"][table]
    qis = [c for c, klass in report["column_classes"].items()
           if klass == "quasi_identifier" and c in ("age_band", "sex", "zip3", "state", "facility_id",
                                                     "encounter_type", "clinical_status", "status", "index_year")]
    assert set(qis) <= set(report["quasi_identifiers"])
    # k counts people: the distinct patient pseudonyms in each class (a patient's several rows are one person).
    people = frame.groupby(qis, dropna=False)["patient_pseudonym"].nunique() if qis else None
    smallest = people.min() if qis else frame["patient_pseudonym"].nunique()
    assert smallest >= settings.deidentify.k_anonymity
    assert report["k"] == smallest and report["version"] == published["lake"].version("deidentified", table)


@pytest.mark.integration
@pytest.mark.parametrize(("table", "sensitive"), [("conditions", "icd10_code"), ("outcomes", "t2d_within_1y"),
                                                  ("medications", "rxnorm_code")])
def test_when_a_table_has_a_sensitive_attribute_then_l_diversity_holds(published, settings, table, sensitive):
    frame = published["out"][table]
    qis = published_report(published["lake"], table)["quasi_identifiers"]
    fewest = frame.groupby(qis, dropna=False)[sensitive].nunique().min() if qis else frame[sensitive].nunique()
    assert fewest >= settings.deidentify.l_diversity


@pytest.mark.integration
def test_when_tables_are_published_then_no_direct_identifier_of_raw_appears_anywhere(published):
    patients = published["raw"]["patients"]
    values = {str(v) for c in DIRECT for v in patients[c].dropna()}
    values |= {f"{f} {la}" for f, la in zip(patients["first_name"], patients["last_name"], strict=True)}
    values |= {str(v) for v in published["raw"]["encounters"]["provider_npi"]}
    for table, frame in published["out"].items():
        text = "\n".join(frame.astype(str).to_numpy().ravel())
        leaked = sorted(v for v in values if v and re.search(rf"(?<![\w]){re.escape(v)}(?![\w])", text))
        assert not leaked, f"{table} leaks {leaked[:5]}"
        assert not {"patient_id", "mrn", "ssn", "phone", "email", "address", "first_name"} & set(frame.columns)


@pytest.mark.integration
def test_when_an_untagged_column_holds_phi_then_it_is_flagged_and_not_published(published):
    report = published_report(published["lake"], "patients")
    assert report["flagged_columns"] == ["next_of_kin"]
    assert "next_of_kin" not in published["out"]["patients"].columns
    assert report["scanned"]["preferred_language"]["phi_share"] < 0.2
    assert "preferred_language" in published["out"]["patients"].columns


@pytest.mark.integration
def test_when_published_then_the_contract_columns_and_report_are_there(published):
    patients = published["out"]["patients"]
    assert {"patient_pseudonym", "age_band", "zip3"} <= set(patients.columns)
    assert patients["patient_pseudonym"].str.startswith("ps1_").all()
    assert set(patients["age_band"]) <= {*(f"{a}-{a + 4}" for a in range(0, 90, 5)),
                                         *(f"{a}-{a + 9}" for a in range(0, 90, 10)),
                                         *(f"{a}-{min(a + 19, 89)}" for a in range(0, 90, 20)), "90+", "*"}
    assert "t2d_within_1y" in published["out"]["outcomes"].columns
    report = published_report(published["lake"], "patients")
    assert report["column_classes"]["age_band"] == "quasi_identifier"
    for table in TABLES:   # what is published holds no direct identifier: each was dropped or transformed
        classes = published_report(published["lake"], table)["column_classes"]
        assert set(classes) == set(published["out"][table].columns)
        assert "direct_identifier" not in classes.values(), (table, classes)
    assert published_report(published["lake"], "notes")["column_classes"]["text"] == "sensitive"
    assert published_report(published["lake"], "encounters")["column_classes"]["encounter_id"] == "quasi_identifier"
    assert {"k", "suppressed", "version", "column_classes"} <= set(report)


@pytest.mark.integration
def test_when_notes_are_published_then_phi_is_replaced_by_surrogates(published):
    raw, out = published["raw"]["notes"], published["out"]["notes"]
    assert len(out) == len(raw) - published_report(published["lake"], "notes")["suppressed"]
    identifying = {"PERSON", "MEDICAL_RECORD_NUMBER", "US_SSN", "PHONE_NUMBER", "EMAIL_ADDRESS", "STREET_ADDRESS",
                   "HEALTH_PLAN_ID", "NPI"}
    for original, spans, masked in zip(raw["text"], raw["spans"], out["text"], strict=True):
        assert masked != original and "Assessment and plan" in masked   # still a readable note
        for span in json.loads(spans):
            value = original[span["start"]:span["end"]]
            if span["label"] in identifying:
                assert not re.search(rf"(?<!\w){re.escape(value)}(?!\w)", masked), (span["label"], value)
    assert "spans" not in out.columns


@pytest.mark.integration
def test_when_tables_are_published_then_one_audit_event_each(published):
    events = published["lake"].read_pandas("audit", "events")
    writes = events[(events["action"] == str(AuditAction.WRITE)) & (events["zone"] == "deidentified")]
    assert sorted(writes["table_name"]) == sorted(TABLES)
    assert not writes["details"].str.contains("@").any()   # no e-mail (or any cell) in the audit zone


@pytest.mark.integration
def test_when_a_table_is_too_small_for_k_then_nothing_is_published(published, settings):
    strict_gate = settings.deidentify.model_copy(update={"k_anonymity": 1000})
    strict = Deidentifier(published["plake"], settings.model_copy(update={"deidentify": strict_gate}),
                          detector=shared_detector(), release_gate=False)
    before = published["lake"].version("deidentified", "outcomes")
    with pytest.raises(RiskGateError):
        strict.publish("outcomes")
    assert published["lake"].version("deidentified", "outcomes") == before
    reports = strict.publish_all(["outcomes"])   # a batch run reports the refusal and goes on with the rest
    assert "k=1000" in reports["outcomes"]["refused"]
    assert published["lake"].version("deidentified", "outcomes") == before


@pytest.mark.e2e
def test_when_deidentify_runs_from_the_cli_on_vault_then_the_table_is_published(tmp_path, openbao, vault_provider,
                                                                                kek_name):
    import os
    import subprocess
    import sys
    from pathlib import Path

    vault_provider.ensure_key("medguard-audit")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MEDGUARD_")},
           "MEDGUARD_HOME": str(tmp_path / "home"), "MEDGUARD_KEY_PROVIDER": "vault",
           "MEDGUARD_VAULT__ADDR": openbao.addr, "MEDGUARD_VAULT__TOKEN": openbao.token,
           "MEDGUARD_VAULT__KEK_NAME": kek_name}
    from pipeline.settings import load_settings

    lake = Lake(load_settings(home=tmp_path / "home"))
    plake = ProtectedLake(lake, vault_provider, principal="svc:ingest", kek_name=kek_name)
    load_raw(plake, generated(60, 11), ("outcomes",))
    medguard = str(Path(sys.executable).with_name("medguard"))
    done = subprocess.run([medguard, "deidentify", "--table", "outcomes", "--json"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["tables"]["outcomes"]
    assert result["rows_out"] == 60 and result["k"] >= 5
    assert published_report(lake, "outcomes")["version"] == result["version"]
    assert "patient_id" not in lake.read_pandas("deidentified", "outcomes").columns
    missing = subprocess.run([medguard, "deidentify", "--table", "nope"], env=env, capture_output=True, text=True,
                             timeout=300, check=False)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_when_a_second_batch_brings_the_same_records_then_each_is_published_once(published, settings):
    plake, lake = published["plake"], published["lake"]
    again = plake.read("raw", "outcomes", decrypt=True)  # the same records, as a re-sent extract would land them
    protection = plake.protection("raw", "outcomes")
    plake.append("raw", "outcomes", again, protection, commit=CommitInfo(principal="svc:ingest", purpose="ingest"))
    assert lake.read_arrow("raw", "outcomes").num_rows == 2 * again.num_rows
    published["deid"].publish("outcomes")
    out = lake.read_pandas("deidentified", "outcomes")
    assert len(out) == again.num_rows - published["reports"]["outcomes"]["suppressed"]
    assert out["row_id"].is_unique


@pytest.mark.integration
def test_when_a_patient_is_shredded_then_their_rows_leave_the_deidentified_zone(published, settings):
    plake, lake = published["plake"], published["lake"]
    before = lake.read_pandas("deidentified", "encounters")
    victim = before["patient_pseudonym"].value_counts().index[0]  # a patient with rows in the release

    raw = lake.read_pandas("raw", "encounters", columns=["patient_pseudonym"])["patient_pseudonym"]

    plake.shred(victim, reason="erasure ER-7")
    report = published["deid"].publish("encounters")

    after = lake.read_pandas("deidentified", "encounters")
    assert victim not in set(after["patient_pseudonym"])
    assert len(after) + report["suppressed"] == int((raw != victim).sum())  # every other row is accounted for
