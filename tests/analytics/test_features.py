"""Features on Spark: windows before the index date, indicators, bands; no identifier enters a feature set."""

from __future__ import annotations

import pandas as pd
import pytest

from analytics.config import TrainConfig
from analytics.contract import published_classifier
from analytics.features import GROUP, LABEL, build_features
from analytics.flow import open_tables
from analytics.synthetic import publish, synthetic_deidentified
from pipeline.errors import ValidationError
from pipeline.lake import CommitInfo, Zone


@pytest.fixture(scope="module")
def small():
    return synthetic_deidentified(400, 5)


@pytest.fixture
def tables(spark, lake, small):
    publish(lake, small)
    return open_tables(lake)[0]


def test_when_features_are_built_then_windows_indicators_and_bands_appear_per_patient(tables, lake, classified,
                                                                                      small):
    sdf, contract = build_features(tables, "outcomes", TrainConfig(), classified.classify,
                                   label="t2d_within_1y")
    frame = sdf.toPandas()
    labelled = small.tables["outcomes"]["t2d_within_1y"].notna().sum()
    assert len(frame) == labelled and frame[GROUP].is_unique
    for name in ("obs_4548_4_last", "obs_4548_4_mean", "obs_4548_4_trend", "dx_i10", "rx_861007", "sex_f",
                 "age_band_lower"):
        assert name in contract.features, name
    assert set(frame["dx_i10"].unique()) <= {0.0, 1.0}
    assert frame["obs_4548_4_last"].between(3, 20).all()
    assert set(frame[LABEL].unique()) <= {0, 1}
    # The last HbA1c equals the latest observation before the (shifted) index date, per patient.
    obs = small.tables["observations"]
    one = frame.iloc[0][GROUP]
    rows = obs[(obs["patient_pseudonym"] == one) & (obs["loinc_code"] == "4548-4")]
    index = pd.Timestamp(small.tables["outcomes"].set_index("patient_pseudonym").loc[one, "index_date"], tz="UTC")
    rows = rows[pd.to_datetime(rows["effective_time"]) < index].sort_values("effective_time")
    assert frame.iloc[0]["obs_4548_4_last"] == pytest.approx(rows["value"].iloc[-1])


def test_when_scoring_with_a_contract_then_the_same_columns_come_back_without_a_label(tables, lake, classified):
    _, contract = build_features(tables, "outcomes", TrainConfig(), classified.classify, label="t2d_within_1y")
    sdf, _ = build_features(tables, "outcomes", TrainConfig(), classified.classify, contract=contract)
    assert [c for c in sdf.columns if c in contract.features] == contract.features and LABEL not in sdf.columns


@pytest.mark.parametrize(("table", "column"), [("patients", "sex"), ("observations", "value"), ("outcomes",
                                                                                               "prevalent_t2d")])
def test_when_a_source_column_is_a_direct_identifier_then_features_are_refused(tables, lake, classified, table,
                                                                               column):
    classified[table][column] = "direct_identifier"
    with pytest.raises(ValidationError, match="direct identifier"):
        build_features(tables, "outcomes", TrainConfig(features=(column,)) if table == "outcomes" else TrainConfig(),
                       classified.classify, label="t2d_within_1y")


def test_when_a_column_is_unclassified_then_features_are_refused(tables, lake, classified):
    del classified["patients"]["age_band"]
    with pytest.raises(ValidationError, match="no known column class"):
        build_features(tables, "outcomes", TrainConfig(), classified.classify, label="t2d_within_1y")


def test_when_a_table_was_last_written_without_a_de_identification_report_then_features_are_refused(
        spark, lake, small):
    publish(lake, small)
    lake.overwrite(Zone.DEIDENTIFIED, "outcomes", small.tables["outcomes"],
                   commit=CommitInfo(principal="svc:test", purpose="written outside de-identification"))
    with pytest.raises(ValidationError, match=r"deidentified/outcomes.*refusing"):
        build_features(open_tables(lake)[0], "outcomes", TrainConfig(), published_classifier(lake),
                       label="t2d_within_1y")


def test_when_de_identification_published_the_classes_then_the_published_classifier_serves_them(
        spark, lake, small, classified, publish_reported):
    for name, frame in small.tables.items():
        publish_reported(lake, name, frame, classified[name])
    assert dict(published_classifier(lake)("patients")) == classified["patients"]
    _, contract = build_features(open_tables(lake)[0], "outcomes", TrainConfig(), published_classifier(lake),
                                 label="t2d_within_1y")
    assert "obs_4548_4_last" in contract.features


def test_when_the_label_column_is_missing_then_the_error_names_it(tables, lake, classified):
    with pytest.raises(ValidationError, match="no_such_label"):
        build_features(tables, "outcomes", TrainConfig(), classified.classify, label="no_such_label")
