"""Policies name real columns: every column a rule names must be a column of a catalog table the rule covers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import access
from access.policy import load_policy
from pipeline.errors import SettingsError


def _policy_with(tmp_path: Path, rule: dict) -> Path:
    data = yaml.safe_load(Path(access.__file__).with_name("policies").joinpath("default.yaml").read_text())
    data["rules"].append(rule)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_when_a_rule_names_a_column_its_tables_lack_then_load_fails_naming_rule_and_column(tmp_path):
    # The case: a grant written for columns the predictions table never had.
    rule = {"id": "old-predictions", "roles": ["analyst"], "zones": ["predictions"], "tables": ["diagnoses"],
            "actions": ["read"], "purposes": ["research"],
            "columns": {"probability": "plaintext", "score": "plaintext"}}
    with pytest.raises(SettingsError, match=r"rule 'old-predictions' names column 'score', which is not a column of "
                                            r"predictions\.diagnoses"):
        load_policy(_policy_with(tmp_path, rule))


def test_when_a_column_exists_only_in_the_deidentified_release_then_a_rule_on_that_zone_accepts_it(tmp_path):
    published = {"id": "research-age", "roles": ["analyst"], "zones": ["deidentified"], "actions": ["read"],
                 "purposes": ["research"], "columns": {"age_band": "plaintext"}}
    raw_only = {**published, "id": "raw-age", "zones": ["raw"]}
    assert load_policy(_policy_with(tmp_path, published)).rules[-1].id == "research-age"
    with pytest.raises(SettingsError, match="rule 'raw-age' names column 'age_band'"):
        load_policy(_policy_with(tmp_path, raw_only))


def test_when_the_shipped_policy_loads_then_every_column_it_names_is_real():
    named = {c for rule in load_policy().rules for c in rule.columns}
    assert {"top_features", "out_of_profile_reasons"} <= named
