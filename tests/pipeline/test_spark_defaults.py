"""The cluster's Spark defaults (infra/spark/spark-defaults.conf) against the installed packages: the Delta and
hadoop-aws jars it asks Maven for are the builds this pyspark and delta-spark need, and its security settings are
the ones medguard's cluster checks expect."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.spark import DELTA_CATALOG, DELTA_EXTENSION, delta_jars_help, delta_package

CONF = Path(__file__).resolve().parents[2] / "infra" / "spark" / "spark-defaults.conf"


def _conf() -> dict[str, str]:
    """The file as Spark reads a properties file: ``key value`` per line, ``#`` comments."""
    entries: dict[str, str] = {}
    for line in CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            assert key not in entries, f"{key} is set twice"
            entries[key] = value.strip()
    return entries


def _pyspark_hadoop_version() -> str:
    import pyspark

    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert len(jars) == 1, jars
    return jars[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def test_when_the_cluster_defaults_are_read_then_delta_is_the_build_for_the_installed_pyspark_and_delta_spark() -> None:
    from importlib.metadata import version

    conf = _conf()
    packages = conf["spark.jars.packages"].split(",")
    spark_minor = ".".join(version("pyspark").split(".")[:2])
    assert delta_package() == f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"
    assert delta_package() in packages
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    # The error a user sees without the jars names the same build.
    assert f"spark.jars.packages={delta_package()}" in delta_jars_help()


def test_when_the_cluster_defaults_are_read_then_hadoop_aws_matches_pyspark_hadoop() -> None:
    packages = _conf()["spark.jars.packages"].split(",")
    assert f"org.apache.hadoop:hadoop-aws:{_pyspark_hadoop_version()}" in packages


@pytest.mark.parametrize("key", ["spark.io.encryption.enabled", "spark.authenticate", "spark.network.crypto.enabled"])
def test_when_the_cluster_defaults_are_read_then_records_stay_encrypted_on_disk_and_wire(key: str) -> None:
    assert _conf()[key] == "true"


def test_when_the_cluster_defaults_are_read_then_they_hold_no_secret() -> None:
    conf = _conf()
    assert not [key for key in conf if "secret" in key or key.endswith((".access.key", ".secret.key"))]
