"""The one settings object of medguard, read from ``MEDGUARD_*`` variables and an optional YAML file.

Precedence, highest first: values passed in code, ``MEDGUARD_*`` environment variables (nested fields use
``__``, e.g. ``MEDGUARD_SPARK__MASTER``), the YAML file named by ``--config`` or ``MEDGUARD_CONFIG``, defaults.
Invalid settings raise :class:`~pipeline.errors.SettingsError` at load time, naming the setting.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Mapping
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings import SettingsError as PydanticSettingsError

from pipeline.errors import SettingsError

ENV_PREFIX = "MEDGUARD_"
CONFIG_ENV = "MEDGUARD_CONFIG"
# Spark's master URL forms; a bare prefix check would let "localhost:7077" through to fail at start-up.
_SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?|local-cluster\[\d+,\d+,\d+\]|yarn|(spark|k8s|mesos|sc)://\S+"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(_Section):
    """Where Spark runs and how it is configured."""

    master: str = "local[*]"
    app_name: str = "medguard"
    ui_enabled: bool = True
    driver_memory: str = "2g"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        if not _SPARK_MASTER.fullmatch(value):
            raise ValueError("expected local[*], local[N], spark://HOST:PORT, yarn, k8s://URL or sc://HOST")
        return value


class VaultSettings(_Section):
    """How to reach Vault (or OpenBao) Transit. An empty ``addr`` means the local OpenBao of ``vault up``."""

    addr: str | None = None
    auth_method: Literal["token", "approle"] = "token"
    token: SecretStr | None = None
    role_id: str | None = None
    secret_id: SecretStr | None = None
    namespace: str | None = None
    transit_mount: str = "transit"
    kek_name: str = "medguard-kek"
    verify_tls: bool = True
    ca_cert: Path | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)
    # The local OpenBao of `medguard vault up` listens on 127.0.0.1:local_port (its cluster port is the next one).
    local_port: int = Field(default=8201, ge=1024, le=65534)

    @field_validator("addr")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _approle_complete(self) -> VaultSettings:
        if self.auth_method == "approle" and self.addr and not self.role_id:
            raise ValueError("auth_method 'approle' needs vault.role_id (MEDGUARD_VAULT__ROLE_ID)")
        return self


class KeyringSettings(_Section):
    """The local keyring file, for machines with no Vault at all. The master secret is never in code."""

    path: Path | None = None
    master_key_env: str = "MEDGUARD_KEYRING_MASTER_KEY"
    master_key_file: Path | None = None


class IngestionSettings(_Section):
    """Layer 1: how sources are read and loaded."""

    # Rows per chunk (one Delta commit per zone each): for Parquet, fewer for a wide table; sources read record
    # by record (FHIR, HL7, C-CDA, notes, CSV, JSON lines) cut at 50,000 records (ingestion.sources._base).
    chunk_rows: int = Field(default=200_000, ge=100, le=5_000_000)
    # Processes that conform and validate chunks ahead of the loader (0: all in the loading process); None
    # picks by core count (none on 2 cores, where a worker measured no faster; see ingestion.checking).
    workers: int | None = Field(default=None, ge=0, le=64)
    # A line, bundle or message longer than this is quarantined whole (only its first 64 KiB kept).
    max_record_bytes: int = Field(default=4 * 2**20, ge=1024, le=15 * 2**20)
    # Rows read to draft a contract for an extract that has none.
    infer_sample_rows: int = Field(default=10_000, ge=10, le=1_000_000)
    # A tabular extract with more columns than this is refused whole, before any row is read (see
    # ingestion.sources.tabular): a 10,000-column CSV once ran 13 minutes. Raise it for a genuinely wide table.
    max_columns: int = Field(default=2_000, ge=1, le=100_000)
    # The facility a record with no facility_id is given at conform (patients, encounters); unset: left null.
    # Real exports rarely name a facility of ours; a hospital feeding its own exports sets its id here.
    default_facility: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


# Per entity type detected in notes: surrogate (a realistic stand-in), redact or partial_mask; "default" for the rest.
NoteOp = Literal["surrogate", "redact", "partial_mask"]
_NOTE_ENTITIES: dict[str, NoteOp] = {
    "default": "surrogate", "US_SSN": "redact", "MEDICAL_RECORD_NUMBER": "redact", "HEALTH_PLAN_ID": "redact",
    "ACCOUNT_NUMBER": "redact", "LICENSE_NUMBER": "redact", "DEA_NUMBER": "redact", "NPI": "redact", "VIN": "redact",
    "DEVICE_ID": "redact",
}
# Short environment names of deidentify settings, documented before the section existed; they still work.
SHORT_ENV = {"K_ANONYMITY": "k_anonymity", "L_DIVERSITY": "l_diversity"}
# Short environment names of other sections' settings: MEDGUARD_<NAME> for section.field.
SHORT_SECTION_ENV = {"DEFAULT_FACILITY": ("ingestion", "default_facility")}


class DeidentifySettings(_Section):
    """Layer 2, de-identification: the risk gate, masking knobs and PHI detection. What each column is (class, mask,
    generalisation ladder) is not a setting: it is in the column catalog (:mod:`pipeline.catalog`)."""

    # Publication needs every equivalence class to hold at least k patients, and l distinct sensitive values.
    k_anonymity: int = Field(default=5, ge=2, le=1000)
    l_diversity: int = Field(default=2, ge=1, le=100)
    # Share of rows the risk gate may suppress before it must generalise further.
    max_suppression: float = Field(default=0.05, ge=0.0, le=0.5)
    # Ages (age_band) are computed at this date: the cohort's index date.
    reference_date: date = date(2025, 1, 1)
    # Note tables this long are scanned on Spark (one Presidio engine per executor); with compute=spark, other
    # tables this long are masked on the executors.
    spark_min_rows: int = Field(default=50_000, ge=1)
    # Entries given here replace the shipped ones entity by entity (so an SSN stays redacted unless you say so).
    note_entities: dict[str, NoteOp] = Field(default_factory=lambda: dict(_NOTE_ENTITIES))
    # Processes scoring PHI detection (``medguard deidentify evaluate``).
    processes: int = Field(default=2, ge=1, le=64)

    @field_validator("note_entities", mode="before")
    @classmethod
    def _over_shipped(cls, value: Any) -> Any:
        return {**_NOTE_ENTITIES, **value} if isinstance(value, Mapping) else value


class AccessSettings(_Section):
    """Layer 2, access: sessions, lockout and activity-monitoring thresholds."""

    session_ttl_minutes: int = Field(default=60, ge=1, le=24 * 60)
    # Principals, tokens and lockout.
    token_ttl_days: int = Field(default=90, ge=1, le=3650)
    max_failed_logins: int = Field(default=5, ge=1, le=100)
    lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Policies: a YAML file replacing the shipped access/policies/default.yaml; None uses the shipped one.
    policy_file: Path | None = None
    break_glass_min_reason_chars: int = Field(default=20, ge=5, le=1000)
    # Query gateway limits.
    max_query_chars: int = Field(default=20_000, ge=100, le=1_000_000)
    max_result_rows: int = Field(default=1_000_000, ge=1)
    # Bytes of a result (Arrow buffers): a result passing it is refused while it is read, not after.
    max_result_bytes: int = Field(default=256 * 2**20, ge=1024)
    # Queries one principal may run per minute (the window is kept in the home, shared by every `medguard query`).
    queries_per_minute: int = Field(default=120, ge=1, le=100_000)
    query_timeout_seconds: float = Field(default=60.0, gt=0)
    query_memory_limit: str = Field(default="2GB", pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    # Activity monitoring (storage_security.audit.monitoring): working hours are [start, end) in UTC.
    working_hours_start: int = Field(default=7, ge=0, le=23)
    working_hours_end: int = Field(default=19, ge=1, le=24)
    bulk_factor: float = Field(default=10.0, gt=1.0)
    bulk_min_rows: int = Field(default=1_000, ge=1)
    baseline_min_events: int = Field(default=5, ge=1)
    denial_threshold: int = Field(default=5, ge=2)
    denial_window_minutes: int = Field(default=10, ge=1)
    facility_threshold: int = Field(default=3, ge=2)


class AnalyticsSettings(_Section):
    """Layer 3: training, robustness and drift."""

    target_sensitivity: float = Field(default=0.85, gt=0.0, lt=1.0)
    # Hyper-parameter search stops starting new candidates after this many seconds (the first always runs).
    cv_budget_seconds: float = Field(default=300.0, gt=0)
    # xgboost.spark workers (one per core; the embedded default has few cores).
    num_workers: int = Field(default=1, ge=1, le=256)
    # Drift alerts: population stability index and two-sample Kolmogorov-Smirnov statistic per feature.
    psi_alert: float = Field(default=0.2, gt=0)
    ks_alert: float = Field(default=0.15, gt=0, lt=1)
    # Retraining is triggered when at least this share of features alerts.
    retrain_drift_share: float = Field(default=0.2, gt=0, le=1)
    # Poisoning screen: the share of clean labelled rows it may flag (sets its thresholds on trusted data).
    screen_false_flag_rate: float = Field(default=0.025, gt=0, lt=0.5)
    # With no trusted reference (a first training set screens itself) only the most inconsistent rows are flagged.
    screen_initial_flag_rate: float = Field(default=0.005, gt=0, lt=0.5)
    # A screened batch is rejected when it lowers validation AUROC by more than this.
    screen_max_auroc_loss: float = Field(default=0.005, ge=0)
    # Model card: a subgroup smaller than this is shown (marked "n too small") but never used to flag a gap.
    subgroup_min_n: int = Field(default=30, ge=1)
    # Bootstrap resamples behind every metric's 95 % interval on the model card.
    bootstrap_draws: int = Field(default=200, ge=20, le=10_000)
    # Membership-inference defence in training (analytics.privacy.MembershipDefence: regularisation, early stopping,
    # served probability rounded to 2 significant figures). On: it cost no clean AUROC on synthetic T2D or UCI heart.
    membership_defence: bool = True
    # Adversarial augmentation in training: adversarial versions of flagged training positives added to the train
    # split (at most augmentation_examples), within the robustness step's attack bounds. On: it cut evasion success
    # on the served model from 0.151 to 0.118 (synthetic T2D, 40,000 patients, 3 seeds, p = 0.006) at no AUROC cost.
    adversarial_augmentation: bool = True
    augmentation_examples: int = Field(default=1000, ge=1, le=100_000)


class EndpointSettings(_Section):
    """Layer 4: registered endpoints and RFC 9421 request signatures."""

    # A signed request is fresh for this long after its ``created`` time; nonces are remembered as long.
    signature_window_seconds: int = Field(default=300, ge=10, le=3600)
    # Requests per minute an endpoint gets when registered without --rate-limit.
    default_rate_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    # After ``endpoints rotate-key`` the old key stays valid this long, then is refused.
    key_overlap_hours: float = Field(default=24.0, ge=0, le=24 * 90)


class ApiSettings(_Section):
    """Layer 4: ``medguard serve`` — the diagnosis API, CDS Hooks and ``/v1/query`` over HTTP(S)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    # TLS: both set serves HTTPS; client_ca set as well requires a client certificate (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Encounters one POST /v1/diagnoses may carry.
    max_batch: int = Field(default=100, ge=1, le=10_000)
    # A payload outside the model's training profile: refused (422) or scored and flagged.
    out_of_profile: Literal["refuse", "flag"] = "flag"
    # Behind a TLS-terminating reverse proxy: take scheme, host, client address and client certificate (SHA-256)
    # from X-Forwarded-Proto/-Host/-For and X-Client-Cert-SHA256. Off: any client could send those headers.
    trust_proxy: bool = False
    # Background flush of the request audit spool to the audit log, in seconds.
    audit_flush_seconds: float = Field(default=2.0, gt=0, le=300)


class CdsHooksSettings(_Section):
    """Layer 4: the CDS Hooks 2.0 service EHRs call (``/cds-services``)."""

    # The public base URL EHRs call (the JWT ``aud`` is ``<service_url>/cds-services/<service_id>``); None: derived
    # from the request's scheme and Host (set it in production: a Host header is the caller's to choose).
    service_url: str | None = None
    # Longest JWT lifetime accepted (CDS Hooks: at most 5 minutes).
    max_jwt_lifetime_seconds: int = Field(default=300, ge=10, le=300)
    # How far the EHR's clock may run ahead of ours (``iat``) or behind (``exp``), in seconds.
    clock_skew_seconds: int = Field(default=30, ge=0, le=120)
    # The service's id in discovery and its URL (``/cds-services/<service_id>``).
    service_id: str = Field(default="medguard-risk", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    # A flagged card is ``critical`` from this probability on (``warning`` below it, ``info`` when not flagged).
    critical_probability: float = Field(default=0.8, gt=0.0, le=1.0)
    # The card's ``source.url``: where a clinician reads about the model (e.g. its model card); None: no link.
    source_url: str | None = None
    # The ``_count`` of each Observation prefetch query (one per LOINC code the model reads): results per code.
    observation_count: int = Field(default=20, ge=1, le=1000)
    # Largest hook request body accepted (prefetch Bundles included), in bytes.
    max_body_bytes: int = Field(default=4 << 20, ge=1 << 16, le=64 << 20)
    # Discovery (``GET /cds-services``) answers only with a valid JWT too (its ``aud``: the discovery URL).
    discovery_requires_jwt: bool = False


class PgWireSettings(_Section):
    """Layer 4: the PostgreSQL-wire SQL endpoint (``medguard serve --pg-port``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=5433, ge=1, le=65535)
    # TLS: both set wraps every connection in TLS (a client that does not ask for it is refused); the password
    # (an API token) then never crosses the network in clear.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Without TLS the server listens only on a loopback address, unless this is set (a TLS-terminating proxy on
    # the same private network in front of it): the password is an API token and would otherwise travel in clear.
    allow_plaintext_non_loopback: bool = False
    # Connections served at once; more are refused with "too many connections".
    max_connections: int = Field(default=32, ge=1, le=1024)
    # Seconds a client has to finish the TLS handshake and log in, and a logged-in connection may stay idle.
    login_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    idle_timeout_seconds: float = Field(default=900.0, gt=0, le=86_400)
    # Longest protocol message accepted (a query, a Bind with its parameters), in bytes.
    max_message_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 2**20)


class GovernanceSettings(_Section):
    """Layer 3: when a trained candidate model may become the current one, and what a prediction explains."""

    # Floors on the held-out test split. ``judge_on: bound`` compares the pessimistic end of the 95 % bootstrap
    # interval (the lower bound of AUROC/sensitivity/specificity, the upper bound of ECE) with the floor, so a
    # model passes only when the test data show it meets the floor; ``point`` compares the point estimate.
    min_auroc: float = Field(default=0.70, ge=0.5, le=1.0)
    min_sensitivity: float = Field(default=0.70, ge=0.0, le=1.0)
    min_specificity: float = Field(default=0.40, ge=0.0, le=1.0)
    max_ece: float = Field(default=0.10, gt=0.0, le=1.0)
    judge_on: Literal["bound", "point"] = "bound"
    # Bootstrap resamples behind the intervals.
    n_boot: int = Field(default=200, ge=20, le=10_000)
    # The candidate's test AUROC may be at most this much below the current model's on the same test rows.
    max_auroc_drop: float = Field(default=0.02, ge=0.0, le=0.5)
    # Training promotes a candidate that earns it; off: every candidate waits for `medguard models promote`.
    auto_promote: bool = True
    # Contributing features stored with each prediction (largest |SHAP value| first).
    top_features: int = Field(default=5, ge=1, le=20)


class OrchestrationSettings(_Section):
    """The Airflow DAGs: how tasks retry and time out, and where their connections and secrets come from."""

    # Retries of a failed task (each retry is safe: writes are idempotent per batch), and the pause between them.
    task_retries: int = Field(default=2, ge=0, le=20)
    retry_delay_seconds: int = Field(default=60, ge=0, le=24 * 3600)
    # A task running longer than this fails (and alerts) instead of holding a worker slot for ever.
    task_timeout_minutes: int = Field(default=120, ge=1, le=7 * 24 * 60)
    # ``settings``: tasks read keys, tokens and storage options from these settings (the embedded default);
    # ``vault``: from Airflow's HashiCorp Vault secrets backend (apache-airflow-providers-hashicorp).
    secrets: Literal["settings", "vault"] = "settings"
    # Task slots of a plain Airflow on this home (core.parallelism, which is also how many processes the
    # LocalExecutor starts); None: one per CPU core. Airflow's own default, 32, swamps a small machine.
    workers: int | None = Field(default=None, ge=1, le=256)
    # Where the API server of `airflow standalone`/`api-server` on this home listens (127.0.0.1); the tasks reach
    # its execution API at http://127.0.0.1:<api_port>/execution/.
    api_port: int = Field(default=8080, ge=1024, le=65535)


class BackupSettings(_Section):
    """``medguard backup``: encrypted backups of the lake, the key store and the audit log."""

    # Where backups are written (None: ``<home>/backups``); a local folder (an object-store URI is refused).
    dir: str | None = None
    # Backups are encrypted to this X25519 public key (PEM); restoring needs the matching private key, kept
    # offline. None: ``<home>/backup-key.pub``, made with the private key beside it on the first ``create``.
    public_key: Path | None = None
    private_key: Path | None = None
    # Backups older than this many days are removed by the backup DAG after a newer one verifies.
    retention_days: int = Field(default=30, ge=1, le=3650)


class Settings(BaseSettings):
    """Every knob of medguard. Build it with :func:`load_settings` so errors are reported uniformly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    home: Path = Path(".medguard")
    lake_root: str | None = None
    lake_engine: Literal["delta-rs", "spark"] = "delta-rs"
    # Where layers 1-2 do their per-chunk work: ``local`` in this process; ``spark`` on the executors of
    # ``spark.master`` (mapInArrow), the driver still committing through ``lake_engine``.
    compute: Literal["local", "spark"] = "local"
    # Options of the lake's object store, handed to delta-rs as they are (e.g. AWS_ENDPOINT_URL, AWS_REGION,
    # AWS_ACCESS_KEY_ID, AWS_ALLOW_HTTP, AWS_S3_ALLOW_UNSAFE_RENAME); MEDGUARD_STORAGE_OPTIONS takes them as a
    # JSON object. Secret values: never printed. Empty: delta-rs reads the usual AWS_/GOOGLE_/AZURE_ variables.
    storage_options: dict[str, SecretStr] = Field(default_factory=dict)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    key_provider: Literal["vault", "keyring"] = "vault"
    vault: VaultSettings = Field(default_factory=VaultSettings)
    keyring: KeyringSettings = Field(default_factory=KeyringSettings)
    airflow_home: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    ingestion: IngestionSettings = Field(default_factory=IngestionSettings)
    deidentify: DeidentifySettings = Field(default_factory=DeidentifySettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    governance: GovernanceSettings = Field(default_factory=GovernanceSettings)
    endpoints: EndpointSettings = Field(default_factory=EndpointSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    cds_hooks: CdsHooksSettings = Field(default_factory=CdsHooksSettings)
    pgwire: PgWireSettings = Field(default_factory=PgWireSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = os.environ.get(CONFIG_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _ShortEnvSource(settings_cls)]
        if config:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            moved = sorted(name for name in SHORT_ENV.values() if name in data)
            if moved:
                raise ValueError(f"{', '.join(moved)}: moved into the deidentify section (deidentify.{moved[0]}); "
                                 "the variables MEDGUARD_K_ANONYMITY and MEDGUARD_L_DIVERSITY still work")
        return data

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        # Resolve once so that a later chdir (Spark, Airflow) cannot move the lake.
        home = self.home.expanduser().resolve()
        object.__setattr__(self, "home", home)
        if self.lake_root is None:
            object.__setattr__(self, "lake_root", str(home / "lake"))
        elif "://" not in self.lake_root:
            object.__setattr__(self, "lake_root", str(Path(self.lake_root).expanduser().resolve()))
        if self.airflow_home is None:
            object.__setattr__(self, "airflow_home", home / "airflow")
        if self.keyring.path is None:
            keyring = self.keyring.model_copy(update={"path": home / "keyring.json"})
            object.__setattr__(self, "keyring", keyring)
        return self

    @property
    def lake_is_local(self) -> bool:
        """True when the lake root is a directory on this machine rather than an object-store URI."""
        return "://" not in str(self.lake_root) or str(self.lake_root).startswith("file://")


class _ShortEnvSource(PydanticBaseSettingsSource):
    """``MEDGUARD_K_ANONYMITY`` / ``MEDGUARD_L_DIVERSITY``: the short names of ``deidentify.k_anonymity`` and
    ``deidentify.l_diversity`` (``MEDGUARD_DEIDENTIFY__K_ANONYMITY`` wins when both are set); likewise
    ``MEDGUARD_DEFAULT_FACILITY`` for ``ingestion.default_facility``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {name: os.environ[ENV_PREFIX + short] for short, name in SHORT_ENV.items()
                 if ENV_PREFIX + short in os.environ}
        out: dict[str, dict[str, str]] = {"deidentify": found} if found else {}
        for short, (section, name) in SHORT_SECTION_ENV.items():
            if ENV_PREFIX + short in os.environ:
                out.setdefault(section, {})[name] = os.environ[ENV_PREFIX + short]
        return out


def _setting_name(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if not isinstance(part, int)]
    dotted = ".".join(parts)
    env = ENV_PREFIX + "__".join(part.upper() for part in parts)
    if len(parts) == 2 and parts[0] == "deidentify" and parts[1].upper() in SHORT_ENV:
        env += f" or {ENV_PREFIX}{parts[1].upper()}"
    if len(parts) == 2 and (parts[0], parts[1]) in SHORT_SECTION_ENV.values():
        env += f" or {ENV_PREFIX}{parts[1].upper()}"
    return f"{dotted} ({env})" if dotted else "settings"


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    # A typo such as MEDGUARD_K_ANONIMITY would otherwise be ignored and the default silently used.
    known = {name.upper() for name in Settings.model_fields} | {"CONFIG", "KEYRING_MASTER_KEY"} | set(SHORT_ENV)
    known |= set(SHORT_SECTION_ENV)
    for name in environ:
        if name.startswith(ENV_PREFIX):
            field = name[len(ENV_PREFIX) :].split("__", 1)[0]
            if field not in known:
                raise SettingsError(f"unknown setting {name}: no medguard setting is called {field.lower()!r}")


def _check_config_file(path: Path, source: str) -> None:
    if not path.is_file():
        raise SettingsError(f"config file {path} (from {source}) does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path} (from {source}) is not readable YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise SettingsError(
            f"config file {path} (from {source}) must hold a mapping of settings, not {type(loaded).__name__}"
        )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and an optional YAML file.

    Args:
        config_file: a YAML file; when omitted, ``MEDGUARD_CONFIG`` is used if set.
        **overrides: values that win over every other source (tests, CLI flags).

    Raises:
        SettingsError: a setting is invalid or unknown, or the YAML file is unreadable; the message names it.
    """
    _reject_unknown_env(os.environ)
    previous = os.environ.get(CONFIG_ENV)
    if config_file is not None:
        _check_config_file(Path(config_file), "--config")
        os.environ[CONFIG_ENV] = str(config_file)
    elif previous:
        # pydantic-settings would silently skip a missing file; a typo in the path must not mean defaults.
        _check_config_file(Path(previous), CONFIG_ENV)
    try:
        return Settings(**overrides)
    except PydanticValidationError as exc:
        problems = "; ".join(f"{_setting_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise SettingsError(f"invalid setting {problems}") from exc
    except (OSError, yaml.YAMLError, PydanticSettingsError) as exc:
        # PydanticSettingsError: a value that is not valid JSON for a nested setting, naming the field.
        raise SettingsError(f"cannot read settings: {exc}") from exc
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop(CONFIG_ENV, None)
            else:
                os.environ[CONFIG_ENV] = previous


# Everything medguard writes is its owner's alone: raw Parquet, the audit log, the model signing key, scratch files.
PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
TEMP_DIR = "tmp"
# The system temp folder as this process found it, before private_home moved tempfile under the home: the demo's
# final check scans it too.
SYSTEM_TEMP_DIR = Path(tempfile.gettempdir())


def private_home(settings: Settings) -> Path:
    """Make this process write files only their owner reads, under ``MEDGUARD_HOME``; returns its temp folder.

    Sets the process umask to 077 (so every file and folder medguard, delta-rs, Spark's JVM and its Python workers
    create is 0600/0700), creates the home, the local lake root, ``models/`` and ``tmp/`` as 0700 and tightens them
    if an older run left them open, and points Python's ``tempfile`` (and ``TMPDIR`` for child processes) at
    ``<home>/tmp``, so no temporary file lands in a shared ``/tmp``. Called once per process by the CLI and by
    :func:`get_settings` (the DAG tasks); idempotent.

    Raises:
        SettingsError: the home or one of those folders is a symbolic link (files would be written through it)
            or is not a folder.
    """
    os.umask(PRIVATE_UMASK)
    home = settings.home
    folders = [home, home / "models", home / TEMP_DIR]
    if settings.lake_is_local:
        folders.append(Path(str(settings.lake_root).removeprefix("file://")))
    for folder in folders:
        if folder.is_symlink():
            raise SettingsError(f"{folder} is a symbolic link: medguard writes only into a folder of its own (name "
                                "the real folder: MEDGUARD_HOME, or MEDGUARD_LAKE_ROOT for a lake kept elsewhere)")
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
            if stat.S_IMODE(folder.stat().st_mode) != PRIVATE_DIR_MODE:
                folder.chmod(PRIVATE_DIR_MODE)
        except (FileExistsError, NotADirectoryError) as exc:
            raise SettingsError(f"{folder} is not a folder") from exc
        except OSError as exc:
            raise SettingsError(f"cannot make {folder} private to its owner ({type(exc).__name__})") from exc
    temp = home / TEMP_DIR
    os.environ["TMPDIR"] = str(temp)
    tempfile.tempdir = str(temp)
    return temp


@cache
def get_settings() -> Settings:
    """The process-wide settings, loaded once (call ``get_settings.cache_clear()`` after changing env), with the
    process made private to its owner (:func:`private_home`)."""
    settings = load_settings()
    private_home(settings)
    return settings
