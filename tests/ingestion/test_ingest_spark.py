"""The executor side of ``compute=spark``, without a cluster: the functions ``mapInArrow`` runs are the in-process
ones, and what tasks carry holds no secret. (The cluster itself: ``test_spark_cluster.py``.)"""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from ingestion.checking import check_table
from ingestion.contract import builtin_contract
from ingestion.sources._base import TableRows
from ingestion.spark import check_batches
from pipeline.errors import EngineUnavailableError
from pipeline.settings import load_settings
from pipeline.spark import _builder_conf, _check_cluster_transport, executor_settings, settings_on_executor

GOOD_OBS = {"observation_id": "o1", "patient_id": "p1", "encounter_id": "e1", "category": "vital-signs",
            "code": "8480-6", "code_system": "http://loinc.org", "loinc_code": "8480-6", "display": "Systolic",
            "value": 120.0, "unit": "mm[Hg]", "effective_time": "2024-03-01T10:00:00Z"}


def _rows(*changes: dict) -> TableRows:
    rows = TableRows()
    for number, change in enumerate(changes, start=1):
        rows.add({**GOOD_OBS, "observation_id": f"o{number}", **change}, f"line {number}")
    return rows


def _facts(checked) -> tuple:
    return (checked.candidates, checked.hashes, checked.patients, checked.keys, checked.typed,
            {i: sorted(rule for rule, _ in found) for i, found in checked.result.violations.items()},
            sorted((o.rule, o.success, o.unexpected_count) for o in checked.result.outcomes))


def test_when_chunks_go_through_the_executor_function_then_verdicts_equal_check_table() -> None:
    contract = builtin_contract("observations")
    first, second = _rows({}, {"value": 300.0}, {"value": "high"}), _rows({"effective_time": "2023-02-30T10:00:00Z"},
                                                                          {"patient_id": "p2"})
    batch = pa.RecordBatch.from_pylist([{"chunk": 0, "table": "observations", "rows": pickle.dumps(first)},
                                        {"chunk": 1, "table": "observations", "rows": pickle.dumps(second)}])
    out = pa.Table.from_batches(list(check_batches({"observations": contract})(iter([batch]))))
    assert out.column("chunk").to_pylist() == [0, 1]
    on_executor = [pickle.loads(payload) for payload in out.column("checked").to_pylist()]  # noqa: S301
    in_process = [check_table(contract, first), check_table(contract, second)]
    assert [_facts(c) for c in on_executor] == [_facts(c) for c in in_process]
    assert on_executor[0].candidates == [0] and sorted(on_executor[0].result.violations) == [1, 2]


def test_when_settings_go_to_executors_then_secrets_stay_behind_and_the_rest_is_rebuilt() -> None:
    settings = load_settings(compute="spark", vault={"token": "hvs.secret-token", "auth_method": "token"},
                             storage_options={"AWS_SECRET_ACCESS_KEY": "s3-secret"},
                             spark={"conf": {"spark.authenticate.secret": "rpc-secret"}})
    fields = executor_settings(settings)
    assert "secret-token" not in repr(fields) and "s3-secret" not in repr(fields) and "rpc-secret" not in repr(fields)
    rebuilt = settings_on_executor(fields)
    assert rebuilt.vault.token is None and rebuilt.storage_options == {} and rebuilt.spark.conf == {}
    assert (rebuilt.home, rebuilt.lake_root, rebuilt.key_provider, rebuilt.compute) == (
        settings.home, settings.lake_root, settings.key_provider, "spark")
    assert rebuilt.ingestion == settings.ingestion and rebuilt.deidentify == settings.deidentify
    assert settings_on_executor(fields) is rebuilt  # once per executor worker


@pytest.mark.parametrize("compute", ["local", "spark"])
def test_when_a_session_is_configured_then_records_reach_the_jvm_encrypted_whatever_spark_conf_says(compute) -> None:
    settings = load_settings(compute=compute, spark={"conf": {"spark.io.encryption.enabled": "false"}})
    assert _builder_conf(settings)["spark.io.encryption.enabled"] == "true"


@pytest.mark.parametrize(("master", "conf", "refused"), [
    ("spark://10.0.0.5:7077", {}, True),
    ("spark://10.0.0.5:7077", {"spark.authenticate": "true"}, True),
    ("spark://10.0.0.5:7077", {"spark.authenticate": "true", "spark.network.crypto.enabled": "true"}, False),
    ("spark://127.0.0.1:7077", {}, False),  # a master on loopback: the records never leave the machine
    ("local[2]", {}, False),
])
def test_when_compute_is_spark_on_a_networked_master_then_unencrypted_rpc_is_refused(master, conf, refused) -> None:
    settings = load_settings(compute="spark", spark={"master": master, "conf": conf})
    if refused:
        with pytest.raises(EngineUnavailableError, match=r"spark\.network\.crypto\.enabled"):
            _check_cluster_transport(settings, _builder_conf(settings))
    else:
        _check_cluster_transport(settings, _builder_conf(settings))


def test_when_executors_get_the_settings_then_they_hash_records_under_the_lakes_key(keyring_env, tmp_path) -> None:
    from ingestion.checking import record_hash_key, record_hashes
    from storage_security.protected import ProtectedLake

    settings = load_settings(home=tmp_path / "home", compute="spark")
    key = record_hash_key(ProtectedLake.from_settings(settings, principal="svc:ingest"))  # what the driver uses
    batch = pa.RecordBatch.from_pylist([{"chunk": 0, "table": "observations", "rows": pickle.dumps(_rows({}, {}))}])
    contracts = {"observations": builtin_contract("observations")}
    out = pa.Table.from_batches(list(check_batches(contracts, executor_settings(settings))(iter([batch]))))
    checked = pickle.loads(out.column("checked")[0].as_py())  # noqa: S301
    assert checked.hashes is not None and len(checked.hashes) == 2
    assert checked.hashes.to_pylist() == record_hashes("observations", checked.typed, key)


def test_when_medguard_compute_is_set_then_settings_take_it_and_refuse_an_unknown_placement(monkeypatch) -> None:
    from pipeline.errors import SettingsError

    assert load_settings().compute == "local"
    monkeypatch.setenv("MEDGUARD_COMPUTE", "spark")
    assert load_settings().compute == "spark"
    monkeypatch.setenv("MEDGUARD_COMPUTE", "dask")
    with pytest.raises(SettingsError, match="compute"):
        load_settings()


def test_when_fhir_hl7_and_csv_are_checked_on_spark_then_the_lake_matches_the_in_process_path(
        spark, settings, population, tmp_path) -> None:
    import shutil

    from _spark_cluster_driver import snapshot

    from ingestion.batch import ingest
    from storage_security.keys.keyring import LocalKeyring, encode_master_key

    # The executors (this session's Python workers) open the keyring through the settings' key file.
    master = LocalKeyring.generate_master_key()
    ring = LocalKeyring.init(tmp_path / "keyring.json", master)
    ring.ensure_keys(["medguard-kek", "medguard-audit"])
    key_file = tmp_path / "master.key"
    key_file.write_text(encode_master_key(master))
    key_file.chmod(0o600)
    keyring = settings.keyring.model_copy(update={"path": ring.path, "master_key_file": key_file})
    ingestion = settings.ingestion.model_copy(update={"chunk_rows": 1000})
    base = settings.model_copy(update={"lake_root": str(tmp_path / "lake"), "key_provider": "keyring",
                                       "keyring": keyring, "ingestion": ingestion})
    inputs = [("fhir", population / "fhir"), ("hl7", population / "hl7"), ("tabular", population / "patients.csv")]
    tables = {}
    for compute in ("local", "spark"):
        placed = base.model_copy(update={"compute": compute})
        reports = [ingest(placed, source=source, path=path, docs=False).to_dict() for source, path in inputs]
        tables[compute] = (snapshot(placed), [{k: r[k] for k in ("batch_id", "tables")} for r in reports])
        for zone in ("raw", "quarantine"):
            shutil.rmtree(tmp_path / "lake" / zone)
    (local, local_reports), (on_spark, spark_reports) = tables["local"], tables["spark"]
    assert spark_reports == local_reports
    assert {"raw.patients", "raw.encounters", "raw.observations", "quarantine.records"} <= set(local)
    assert set(on_spark) == set(local)
    for name, expected in local.items():
        assert expected.num_rows and on_spark[name].equals(expected), name
