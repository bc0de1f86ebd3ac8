"""Tests for pipeline/settings.py: defaults, sources and their precedence, and errors that name the setting."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from pipeline.errors import SettingsError
from pipeline.settings import CONFIG_ENV, get_settings, load_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MEDGUARD_HOME, with MEDGUARD_CONFIG unset."""
    monkeypatch.setenv("MEDGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return (tmp_path / "home").resolve()


def _yaml(tmp_path: Path, text: str, name: str = "medguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# defaults ----------------------------------------------------------------------------------------------


def test_when_nothing_is_set_then_home_is_dot_medguard_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDGUARD_HOME", raising=False)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)

    settings = load_settings()

    assert settings.home == (tmp_path / ".medguard").resolve()
    assert settings.lake_root == str(settings.home / "lake")


def test_when_only_home_is_set_then_lake_airflow_and_keyring_live_under_it(home: Path) -> None:
    settings = load_settings()

    assert settings.home == home
    assert settings.lake_root == str(home / "lake")
    assert settings.airflow_home == home / "airflow"
    assert settings.keyring.path == home / "keyring.json"
    assert settings.lake_is_local


def test_when_nothing_is_set_then_embedded_engines_are_the_defaults(home: Path) -> None:
    settings = load_settings()

    assert settings.lake_engine == "delta-rs"
    assert settings.key_provider == "vault"
    assert settings.spark.master == "local[*]"
    assert settings.spark.ui_enabled is True
    assert settings.vault.addr is None
    assert settings.deidentify.k_anonymity == 5


def test_when_home_is_relative_then_it_is_resolved_once_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGUARD_HOME", "rel-home")

    settings = load_settings(lake_root="rel-lake")

    assert settings.home == (tmp_path / "rel-home").resolve()
    assert settings.lake_root == str((tmp_path / "rel-lake").resolve())


@pytest.mark.parametrize(
    ("lake_root", "is_local"),
    [
        ("s3://bucket/lake", False),
        ("abfss://container@account.dfs.core.windows.net/lake", False),
        ("file:///srv/lake", True),
    ],
)
def test_when_lake_root_is_a_uri_then_it_is_kept_verbatim(home: Path, lake_root: str, is_local: bool) -> None:
    settings = load_settings(lake_root=lake_root)

    assert settings.lake_root == lake_root
    assert settings.lake_is_local is is_local


def test_when_settings_are_loaded_then_they_are_frozen(home: Path) -> None:
    settings = load_settings()

    with pytest.raises(ValueError, match="frozen"):
        settings.deidentify.k_anonymity = 3  # type: ignore[misc]


def test_when_a_token_is_set_then_repr_does_not_show_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGUARD_VAULT__TOKEN", "hvs.very-secret")

    settings = load_settings()

    assert settings.vault.token is not None
    assert settings.vault.token.get_secret_value() == "hvs.very-secret"
    assert "hvs.very-secret" not in repr(settings)
    assert "hvs.very-secret" not in str(settings)


@pytest.mark.parametrize(
    "master",
    ["local", "local[*]", "local[2]", "local[*,3]", "local-cluster[2,1,1024]", "yarn", "spark://head:7077",
     "spark://h1:7077,h2:7077", "k8s://https://k8s.example:443", "sc://connect.example:15002"],
)
def test_when_spark_master_is_a_spark_master_url_then_it_is_accepted(home: Path, master: str) -> None:
    assert load_settings(spark={"master": master}).spark.master == master


@pytest.mark.parametrize(
    "master", ["", "localhost", "localhost:7077", "local[0]", "local[]", "spark://", "yarn-client", "head:7077"]
)
def test_when_spark_master_is_not_a_spark_master_url_then_settings_error_names_it(home: Path, master: str) -> None:
    with pytest.raises(SettingsError, match=r"spark\.master \(MEDGUARD_SPARK__MASTER\)"):
        load_settings(spark={"master": master})


# environment -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "read", "expected"),
    [
        ("MEDGUARD_K_ANONYMITY", "11", lambda s: s.deidentify.k_anonymity, 11),
        ("MEDGUARD_DEIDENTIFY__L_DIVERSITY", "3", lambda s: s.deidentify.l_diversity, 3),
        ("MEDGUARD_DEIDENTIFY__REFERENCE_DATE", "2024-06-30", lambda s: str(s.deidentify.reference_date),
         "2024-06-30"),
        ("MEDGUARD_LAKE_ENGINE", "spark", lambda s: s.lake_engine, "spark"),
        ("MEDGUARD_KEY_PROVIDER", "keyring", lambda s: s.key_provider, "keyring"),
        ("MEDGUARD_LOG_LEVEL", "DEBUG", lambda s: s.log_level, "DEBUG"),
        ("MEDGUARD_SPARK__MASTER", "spark://head:7077", lambda s: s.spark.master, "spark://head:7077"),
        ("MEDGUARD_SPARK__UI_ENABLED", "false", lambda s: s.spark.ui_enabled, False),
        ("MEDGUARD_SPARK__CONF", '{"spark.jars": "/opt/delta.jar"}', lambda s: s.spark.conf,
         {"spark.jars": "/opt/delta.jar"}),
        ("MEDGUARD_VAULT__ADDR", "https://vault.example:8200", lambda s: s.vault.addr, "https://vault.example:8200"),
        ("MEDGUARD_VAULT__TIMEOUT_SECONDS", "2.5", lambda s: s.vault.timeout_seconds, 2.5),
        ("MEDGUARD_KEYRING__PATH", "/srv/keys.json", lambda s: s.keyring.path, Path("/srv/keys.json")),
    ],
)
def test_when_a_medguard_variable_is_set_then_it_overrides_the_default(
    home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, read, expected
) -> None:
    monkeypatch.setenv(variable, value)

    assert read(load_settings()) == expected


def test_when_one_nested_variable_is_set_then_the_other_nested_defaults_remain(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGUARD_SPARK__MASTER", "local[3]")

    spark = load_settings().spark

    assert spark.master == "local[3]"
    assert spark.app_name == "medguard"
    assert spark.driver_memory == "2g"


def test_when_values_are_passed_in_code_then_they_beat_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGUARD_K_ANONYMITY", "11")
    monkeypatch.setenv("MEDGUARD_SPARK__APP_NAME", "from-env")

    settings = load_settings(deidentify={"k_anonymity": 20}, spark={"master": "local[1]"})

    assert settings.deidentify.k_anonymity == 20
    assert settings.spark.master == "local[1]"
    assert settings.spark.app_name == "from-env"


def test_when_the_keyring_master_key_variable_is_set_then_it_is_not_an_unknown_setting(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGUARD_KEYRING_MASTER_KEY", "c2VjcmV0")

    assert load_settings().keyring.master_key_env == "MEDGUARD_KEYRING_MASTER_KEY"


def test_when_env_changes_then_get_settings_reloads_only_after_cache_clear(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = get_settings()
    monkeypatch.setenv("MEDGUARD_K_ANONYMITY", "9")

    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().deidentify.k_anonymity == 9


# YAML file ---------------------------------------------------------------------------------------------

_YAML = """\
deidentify:
  k_anonymity: 7
lake_engine: delta-rs
spark:
  master: local[4]
  app_name: from-yaml
vault:
  addr: http://127.0.0.1:8200
"""


def test_when_a_config_file_is_given_then_its_values_override_the_defaults(home: Path, tmp_path: Path) -> None:
    settings = load_settings(_yaml(tmp_path, _YAML))

    assert settings.deidentify.k_anonymity == 7
    assert settings.spark.master == "local[4]"
    assert settings.spark.app_name == "from-yaml"
    assert settings.spark.driver_memory == "2g"
    assert settings.vault.addr == "http://127.0.0.1:8200"


def test_when_medguard_config_names_a_file_then_it_is_read(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(_yaml(tmp_path, _YAML)))

    assert load_settings().deidentify.k_anonymity == 7


def test_when_the_short_and_the_section_variable_are_both_set_then_the_section_variable_wins(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGUARD_K_ANONYMITY", "11")
    monkeypatch.setenv("MEDGUARD_DEIDENTIFY__K_ANONYMITY", "13")
    monkeypatch.setenv("MEDGUARD_L_DIVERSITY", "3")

    settings = load_settings()

    assert (settings.deidentify.k_anonymity, settings.deidentify.l_diversity) == (13, 3)


def test_when_note_entities_are_configured_then_they_replace_the_shipped_ones_entity_by_entity(home: Path) -> None:
    entities = load_settings(deidentify={"note_entities": {"PERSON": "redact", "default": "redact"}}).deidentify

    assert entities.note_entities["PERSON"] == "redact" and entities.note_entities["default"] == "redact"
    assert entities.note_entities["US_SSN"] == "redact"  # shipped entries not named stay


def test_when_env_and_config_file_disagree_then_env_wins_field_by_field(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGUARD_K_ANONYMITY", "12")
    monkeypatch.setenv("MEDGUARD_SPARK__MASTER", "local[1]")

    settings = load_settings(_yaml(tmp_path, _YAML))

    assert settings.deidentify.k_anonymity == 12
    assert settings.spark.master == "local[1]"
    assert settings.spark.app_name == "from-yaml"  # the rest of the YAML section still applies
    assert settings.vault.addr == "http://127.0.0.1:8200"


def test_when_code_env_and_config_file_all_set_a_value_then_code_wins(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGUARD_K_ANONYMITY", "12")

    assert load_settings(_yaml(tmp_path, _YAML), deidentify={"k_anonymity": 30}).deidentify.k_anonymity == 30


def test_when_config_file_is_passed_then_it_beats_medguard_config_and_env_is_restored(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = _yaml(tmp_path, "deidentify: {k_anonymity: 8}\n", "env.yaml")
    monkeypatch.setenv(CONFIG_ENV, str(from_env))

    assert load_settings(_yaml(tmp_path, _YAML)).deidentify.k_anonymity == 7
    assert os.environ[CONFIG_ENV] == str(from_env)


@pytest.mark.parametrize("text", [_YAML, "deidentify: {k_anonymity: 1}\n"], ids=["valid", "invalid"])
def test_when_config_file_is_passed_without_medguard_config_then_none_is_left_behind(
    home: Path, tmp_path: Path, text: str
) -> None:
    with contextlib.suppress(SettingsError):
        load_settings(_yaml(tmp_path, text))

    assert CONFIG_ENV not in os.environ


def test_when_config_file_is_empty_then_defaults_apply(home: Path, tmp_path: Path) -> None:
    assert load_settings(_yaml(tmp_path, "")).deidentify.k_anonymity == 5


# errors name the setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("MEDGUARD_K_ANONYMITY", "1",
         "deidentify.k_anonymity (MEDGUARD_DEIDENTIFY__K_ANONYMITY or MEDGUARD_K_ANONYMITY)"),
        ("MEDGUARD_K_ANONYMITY", "five", "or MEDGUARD_K_ANONYMITY)"),
        ("MEDGUARD_L_DIVERSITY", "0",
         "deidentify.l_diversity (MEDGUARD_DEIDENTIFY__L_DIVERSITY or MEDGUARD_L_DIVERSITY)"),
        ("MEDGUARD_DEIDENTIFY__MAX_SUPPRESSION", "0.9",
         "deidentify.max_suppression (MEDGUARD_DEIDENTIFY__MAX_SUPPRESSION)"),
        ("MEDGUARD_LAKE_ENGINE", "duckdb", "lake_engine (MEDGUARD_LAKE_ENGINE)"),
        ("MEDGUARD_SPARK__MASTER", "head-node:7077", "spark.master (MEDGUARD_SPARK__MASTER)"),
        ("MEDGUARD_VAULT__ADDR", "vault.internal:8200", "vault.addr (MEDGUARD_VAULT__ADDR)"),
        ("MEDGUARD_VAULT__ADDR", "ftp://vault.internal", "vault.addr (MEDGUARD_VAULT__ADDR)"),
        ("MEDGUARD_VAULT__TIMEOUT_SECONDS", "0", "vault.timeout_seconds (MEDGUARD_VAULT__TIMEOUT_SECONDS)"),
        ("MEDGUARD_SPARK__MASTR", "local[2]", "spark.mastr (MEDGUARD_SPARK__MASTR)"),
        ("MEDGUARD_K_ANONIMITY", "5", "MEDGUARD_K_ANONIMITY"),
        ("MEDGUARD_LAKEROOT", "/srv/lake", "MEDGUARD_LAKEROOT"),
        ("MEDGUARD_SPARK__CONF", "not json", '"spark"'),
    ],
)
def test_when_a_variable_is_invalid_or_unknown_then_settings_error_names_it(
    home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("deidentify:\n  k_anonymity: 1\n", "deidentify.k_anonymity (MEDGUARD_DEIDENTIFY__K_ANONYMITY"),
        ("deidentify:\n  note_entities: {US_SSN: shred}\n", "deidentify.note_entities.US_SSN"),
        ("k_anonymity: 7\n", "k_anonymity: moved into the deidentify section (deidentify.k_anonymity)"),
        ("spark:\n  master: nowhere\n", "spark.master (MEDGUARD_SPARK__MASTER)"),
        ("vault:\n  addr: vault:8200\n", "vault.addr (MEDGUARD_VAULT__ADDR)"),
        ("vault:\n  addr: http://v:8200\n  auth_method: approle\n", "MEDGUARD_VAULT__ROLE_ID"),
        ("k_anonimity: 5\n", "k_anonimity (MEDGUARD_K_ANONIMITY)"),
        ("spark:\n  colour: blue\n", "spark.colour (MEDGUARD_SPARK__COLOUR)"),
        ("spark: local[2]\n", "spark (MEDGUARD_SPARK)"),
    ],
)
def test_when_a_config_file_value_is_invalid_or_unknown_then_settings_error_names_it(
    home: Path, tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_yaml(tmp_path, text))

    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"deidentify": {"k_anonymity": 1}}, "deidentify.k_anonymity"),
        ({"deidentify": {"k_anonymity": 1001}}, "deidentify.k_anonymity"),
        ({"spark": {"master": "localhost"}}, "spark.master"),
        ({"vault": {"addr": "vault.example.org"}}, "vault.addr"),
        ({"key_provider": "hsm"}, "key_provider"),
    ],
)
def test_when_a_value_passed_in_code_is_invalid_then_settings_error_names_it(
    home: Path, overrides: dict, named: str
) -> None:
    with pytest.raises(SettingsError, match=rf"invalid setting {named} \("):
        load_settings(**overrides)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- k_anonymity\n- 7\n", "must hold a mapping of settings, not list"),
        ("just a string\n", "must hold a mapping of settings, not str"),
        ("k_anonymity: [7\n", "is not readable YAML"),
    ],
    ids=["list", "scalar", "malformed"],
)
@pytest.mark.parametrize("via", ["argument", "env"])
def test_when_the_config_file_is_not_a_mapping_then_settings_error_names_the_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, problem: str, via: str
) -> None:
    path = _yaml(tmp_path, text)
    if via == "env":
        monkeypatch.setenv(CONFIG_ENV, str(path))

    with pytest.raises(SettingsError) as caught:
        load_settings(path if via == "argument" else None)

    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    assert ("--config" if via == "argument" else CONFIG_ENV) in str(caught.value)


@pytest.mark.parametrize("via", ["argument", "env"])
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_when_the_config_file_does_not_exist_then_settings_error_names_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str, kind: str
) -> None:
    path = tmp_path / "absent.yaml" if kind == "missing" else tmp_path
    if via == "env":
        monkeypatch.setenv(CONFIG_ENV, str(path))

    with pytest.raises(SettingsError) as caught:
        load_settings(path if via == "argument" else None)

    assert f"config file {path} (from {'--config' if via == 'argument' else CONFIG_ENV}) does not exist" in str(
        caught.value
    )


def test_when_a_default_facility_is_set_by_its_short_name_then_ingestion_takes_it(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().ingestion.default_facility is None  # unset: a record with no facility keeps none
    monkeypatch.setenv("MEDGUARD_DEFAULT_FACILITY", "HOSP-1")
    monkeypatch.setenv("MEDGUARD_INGESTION__CHUNK_ROWS", "1000")
    settings = load_settings()
    assert (settings.ingestion.default_facility, settings.ingestion.chunk_rows) == ("HOSP-1", 1000)
    monkeypatch.setenv("MEDGUARD_INGESTION__DEFAULT_FACILITY", "CLINIC-2")  # the long name wins, as for k
    assert load_settings().ingestion.default_facility == "CLINIC-2"
    monkeypatch.setenv("MEDGUARD_INGESTION__DEFAULT_FACILITY", "no spaces please")
    with pytest.raises(SettingsError, match=r"MEDGUARD_INGESTION__DEFAULT_FACILITY or MEDGUARD_DEFAULT_FACILITY"):
        load_settings()
