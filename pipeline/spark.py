"""The Spark session factory: one session per process, configured from settings, workers on this Python.

Workers must run the interpreter that runs the driver (xgboost.spark and pandas UDFs import the project's
packages in the workers), so ``PYSPARK_PYTHON`` and ``PYSPARK_DRIVER_PYTHON`` are pinned to ``sys.executable``.
When settings select the Spark lake engine, the session is built with Delta's extensions and checked for
Delta's jars at once: a missing jar fails here, at start-up, never halfway through a job. With ``compute=spark``
layers 1-2 run their per-chunk work on executors (:mod:`ingestion.spark`, :mod:`storage_security.deid.spark`);
:func:`executor_settings` is what those tasks carry to rebuild the settings there, secrets left out.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from pipeline.errors import EngineUnavailableError
from pipeline.settings import TEMP_DIR, Settings, get_settings, private_home

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

IO_ENCRYPTION = "spark.io.encryption.enabled"
_CLUSTER_TRANSPORT = ("spark.authenticate", "spark.network.crypto.enabled")
_LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}

# Quiet by default: Spark's WARN lines at start-up (loopback host, native Hadoop, spark.local.dir, I/O encryption
# without RPC encryption on a local master) and its console progress bars drown a command's own output and
# progress. The root stays at WARN, because PySpark prints a "Setting default log level" banner whenever the root
# differs from its shell level (WARN); the known start-up lines are ERROR-only, and the session drops to ERROR once
# started. log_level DEBUG keeps Spark's own defaults.
LOG4J_FILE = "log4j2-medguard.properties"
_START_UP_WARNINGS = ("org.apache.spark.util.Utils", "org.apache.hadoop.util.NativeCodeLoader",
                      "org.apache.spark.SparkConf", "org.apache.spark.SparkEnv")
_QUIET_LOG4J = "\n".join([
    "status = error",
    "appender.console.type = Console",
    "appender.console.name = console",
    "appender.console.target = SYSTEM_ERR",
    "appender.console.layout.type = PatternLayout",
    "appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex",
    "rootLogger.level = warn",
    "rootLogger.appenderRef.stdout.ref = console",
    *(line for i, name in enumerate(_START_UP_WARNINGS)
      for line in (f"logger.quiet{i}.name = {name}", f"logger.quiet{i}.level = error")),
]) + "\n"

_lock = threading.Lock()
_session: SparkSession | None = None


def _quiet(settings: Settings) -> bool:
    return settings.log_level != "DEBUG"


def _builder_conf(settings: Settings) -> dict[str, str]:
    java_options = f"-Dderby.system.home={settings.home / 'derby'} -Djava.io.tmpdir={settings.home / TEMP_DIR}"
    if _quiet(settings):
        java_options += f" -Dlog4j2.configurationFile={settings.home / TEMP_DIR / LOG4J_FILE}"
    conf = {
        "spark.master": settings.spark.master,
        "spark.app.name": settings.spark.app_name,
        "spark.ui.enabled": str(settings.spark.ui_enabled).lower(),
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.warehouse.dir": str(settings.home / "spark-warehouse"),
        # Shuffle/spill blocks and the JVM's temporary files stay under MEDGUARD_HOME (0700, umask 077: see
        # pipeline.settings.private_home), not in a shared /tmp.
        "spark.local.dir": str(settings.home / TEMP_DIR / "spark"),
        "spark.driver.extraJavaOptions": java_options,
        "spark.ui.showConsoleProgress": str(not _quiet(settings)).lower(),
    }
    if settings.lake_engine == "spark":
        conf["spark.sql.extensions"] = DELTA_EXTENSION
        conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    conf.update(settings.spark.conf)
    # Layers 1-2 hand decrypted records to Spark (compute=spark), and one session serves the whole process: with
    # I/O encryption the driver streams records to the JVM over an authenticated socket instead of a temporary
    # file, and shuffle and spill files are encrypted. Set last, so no spark.conf setting can turn it off.
    conf[IO_ENCRYPTION] = "true"
    return conf


def _check_cluster_transport(settings: Settings, conf: dict[str, str]) -> None:
    """Refuse compute=spark on a cluster reached over the network unless Spark's RPC is authenticated and encrypted:
    records and the I/O encryption key travel in task descriptions over RPC."""
    master = conf.get("spark.master", "")
    if settings.compute != "spark" or master.startswith("local"):
        return
    host = master.split("://", 1)[-1].split(",")[0].rsplit(":", 1)[0]
    if host in _LOOPBACK:
        return
    missing = [key for key in _CLUSTER_TRANSPORT if conf.get(key, "").lower() != "true"]
    if missing:
        raise EngineUnavailableError(
            f"compute=spark on the cluster {master} sends records over Spark RPC: set {' and '.join(missing)} to "
            "true in MEDGUARD_SPARK__CONF (with spark.authenticate.secret from the cluster's environment; see "
            "infra/spark/spark-defaults.conf)")


def delta_package() -> str:
    """The Maven coordinate of Delta's Spark jar that matches this environment: the installed delta-spark Python
    package's version (its API calls that jar's classes) built for the installed pyspark's Spark minor version and
    Scala 2.13 (Spark 4 is built for Scala 2.13 only), named as Delta's own ``configure_spark_with_delta_pip`` names
    it; e.g. ``io.delta:delta-spark_4.2_2.13:4.4.1``. infra/spark/spark-defaults.conf names the same coordinate."""
    from importlib.metadata import version

    spark = ".".join(version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark}_2.13:{version('delta-spark')}"


def delta_jars_help() -> str:
    """What to do when Delta's jars are missing, naming the jars that match this environment."""
    _, artifact, delta = delta_package().split(":")
    return (
        "Delta Lake's jars are not on Spark's classpath, so the 'spark' lake engine cannot run. Add them with "
        f"MEDGUARD_SPARK__CONF='{{\"spark.jars\": \"/path/{artifact}-{delta}.jar,/path/delta-storage-{delta}.jar\"}}' "
        f"(or spark.jars.packages={delta_package()} where Maven is reachable, as infra/spark/spark-defaults.conf "
        "does, or put them in $SPARK_HOME/jars on the cluster), or use the embedded engine with "
        "MEDGUARD_LAKE_ENGINE=delta-rs"
    )


def delta_jars_present(spark: SparkSession) -> bool:
    """True when Delta Lake's Spark classes can be loaded by this session's JVM."""
    try:
        spark._jvm.java.lang.Class.forName(DELTA_EXTENSION)  # type: ignore[union-attr]
    except Exception:  # py4j reports ClassNotFoundException as a generic Py4JJavaError
        return False
    return True


def get_spark(settings: Settings | None = None) -> SparkSession:
    """Return this process's Spark session, creating it on first use.

    Raises:
        EngineUnavailableError: settings select the Spark lake engine but Delta's jars are missing.
    """
    global _session
    settings = settings or get_settings()
    with _lock:
        if _session is not None and _session._sc._jsc is not None:  # type: ignore[attr-defined]
            # The running session may have been started for the delta-rs engine: check the jars on every
            # request for the Spark engine, and leave the session running for its other users.
            if settings.lake_engine == "spark" and not delta_jars_present(_session):
                raise EngineUnavailableError(delta_jars_help())
            _check_io_encryption(_session)
            return _session
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        private_home(settings)
        from pyspark.sql import SparkSession

        conf = _builder_conf(settings)
        _check_cluster_transport(settings, conf)
        _quiet_logs(settings)
        builder = SparkSession.builder
        for key, value in conf.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR" if _quiet(settings) else "WARN")
        # getOrCreate ignores the builder's conf when a context already runs (started by other code in the process).
        _check_io_encryption(session)
        if settings.lake_engine == "spark" and not delta_jars_present(session):
            session.stop()
            raise EngineUnavailableError(delta_jars_help())
        _session = session
        return session


def _quiet_logs(settings: Settings) -> None:
    """Write the driver's log4j2 file (ERROR, on stderr) and quiet py4j's Python logger, unless log_level is DEBUG."""
    import logging

    if not _quiet(settings):
        return
    (settings.home / TEMP_DIR / LOG4J_FILE).write_text(_QUIET_LOG4J)
    # py4j logs every gateway connection at INFO once an application configures logging.
    logging.getLogger("py4j").setLevel(logging.WARNING)


def _check_io_encryption(session: SparkSession) -> None:
    if session.sparkContext.getConf().get(IO_ENCRYPTION, "false").lower() != "true":
        raise EngineUnavailableError(
            f"the running Spark session was started without {IO_ENCRYPTION}=true, so records handed to it would "
            "reach a temporary file in plaintext: start medguard in a process of its own")


def executor_settings(settings: Settings) -> dict[str, Any]:
    """What executors need to rebuild ``settings``: every field but the secrets (tokens, storage credentials) and
    Spark's own conf (which can hold ``spark.authenticate.secret`` or object-store keys; executors have theirs).

    Executors take their secrets from their own environment (``MEDGUARD_VAULT__TOKEN``, an AppRole secret id,
    object-store credentials), set where the cluster starts them; a task's closure never carries one.
    """
    return settings.model_dump(mode="json", exclude={"vault": {"token", "secret_id"}, "storage_options": True,
                                                     "spark": {"conf"}})


_executor_settings: dict[str, Settings] = {}


def settings_on_executor(fields: dict[str, Any]) -> Settings:
    """The settings of :func:`executor_settings`, rebuilt once per executor Python worker."""
    import json

    key = json.dumps(fields, sort_keys=True)
    if key not in _executor_settings:
        _executor_settings[key] = Settings(**fields)
    return _executor_settings[key]


def stop_spark() -> None:
    """Stop this process's Spark session, if one is running."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None
