"""Publishes raw tables to the ``deidentified`` zone: classify, mask, pass the risk gate, write, audit.

For each raw table, :meth:`Deidentifier.publish` reads it decrypted through
:class:`~storage_security.protected.ProtectedLake` (the read is audited), classifies every column
(:mod:`~storage_security.deid.classification`; untagged PHI columns are flagged and dropped), masks it
(:mod:`~storage_security.deid.masking`; notes through Presidio with surrogates), enforces k-anonymity and l-diversity
(:mod:`~storage_security.deid.risk`; a table that cannot meet them raises and nothing is written), then overwrites the
deidentified table with the report in the Delta commit's metadata — so the report is stored with the very table
version it describes — and records one audit event. :func:`published_report` reads that report back.

The report's ``ledger`` (raw version and batches published, shredded patients and rules as digests, surrogate names
handed out) makes runs incremental: a table with nothing new is left alone, new raw batches are added to a table
whose published rows are its masked rows, anything else is rebuilt (see :meth:`Deidentifier.publish`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.catalog import ColumnClass
from pipeline.lake import CommitInfo, Lake
from storage_security.deid.classification import (
    AGE,
    BIRTH_DATE,
    BIRTH_YEAR,
    Classified,
    classify,
    name_quasi_identifier,
)
from storage_security.deid.masking import NoteMasker, load_masking_config, mask_table, table_rules
from storage_security.deid.operators import MaskingKeys, is_age_column, top_code_ages
from storage_security.deid.operators.generalize import OLDEST_BAND
from storage_security.deid.risk import (
    WITHHELD,
    RiskGateError,
    apply_release,
    enforce,
    enforce_release,
    k_anonymity,
    l_diversity,
)

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from storage_security.protected import ProtectedLake

PRINCIPAL = "svc:deidentify"
REPORT_KEY = "deidentify_report"
RELEASE_KEY = "release"
LEDGER_KEY = "ledger"
_PURPOSE = "deidentification"

__all__ = ["PRINCIPAL", "Deidentifier", "publish_raw_zone", "publish_raw_zone_or_fail", "published_report", "refused",
           "summary"]


def published_report(lake: Lake, table: str) -> dict[str, Any]:
    """The de-identification report of the current version of ``deidentified/<table>``.

    Returns:
        ``{"column_classes", "k", "l", "suppressed", "quasi_identifiers", "flagged_columns", "version", …}``.

    Raises:
        ValueError: the table was never published, or its latest commit was not written by de-identification.
    """
    if not lake.exists("deidentified", table):
        raise ValueError(f"deidentified.{table} has not been published")
    latest = lake.history("deidentified", table, limit=1)[0]
    text = latest.get(f"medguard.{REPORT_KEY}")
    if text is None:
        raise ValueError(f"deidentified.{table} version {latest.get('version')} carries no de-identification report")
    report = json.loads(text)
    report["version"] = int(latest["version"])
    return report


class Deidentifier:
    """Publishes raw tables as de-identified tables.

    Args:
        plake: the protected lake (reads raw decrypted; its principal is recorded).
        settings: the ``deidentify`` section (k-anonymity, l-diversity, reference date, suppression budget…).
        config: the masking configuration (by default built from the column catalog and ``settings``).
        detector: a :class:`~storage_security.deid.detection.PhiDetector` (built on first need; tests share one).
        release_gate: after :meth:`publish_all`, run :meth:`gate_release` over the whole deidentified zone (on by
            default; off only for tests of one table's own gate).
    """

    def __init__(self, plake: ProtectedLake, settings: Settings, *, config: dict[str, Any] | None = None,
                 detector: Any = None, release_gate: bool = True) -> None:
        self.plake = plake
        self.release_gate = release_gate
        self.settings = settings
        self.config = config or load_masking_config(settings.deidentify)
        self._detector = detector
        self._names: tuple[int, set[str], dict[str, set[str]]] | None = None
        self.reference_date = date.fromisoformat(str(self.config.get("reference_date", "2025-01-01")))

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Deidentifier:
        from storage_security.protected import ProtectedLake

        return cls(ProtectedLake.from_settings(settings, principal=PRINCIPAL), settings, **kwargs)

    @property
    def detector(self) -> Any:
        if self._detector is None:
            from storage_security.deid.detection import PhiDetector

            self._detector = PhiDetector("medguard")
        return self._detector

    def raw_tables(self) -> list[str]:
        """The tables of the raw zone."""
        return self.plake.tables("raw")

    def publish_all(self, tables: Sequence[str] | None = None, *, dag_run: str | None = None,
                    full: bool = False,
                    progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Publish every raw table (or ``tables``), each incrementally unless ``full``; one report per table.

        ``progress`` is called after each table with (table, tables done, number of tables).
        """
        names = list(tables) if tables else self.raw_tables()
        if not names:
            raise ValueError("the raw zone has no tables to de-identify (run ingestion first)")
        reports: dict[str, Any] = {}
        for done, name in enumerate(names, start=1):
            try:
                reports[name] = self.publish(name, dag_run=dag_run, full=full)
            except RiskGateError as exc:
                # One table that cannot be made safe must not hold back the others; it is reported, unpublished.
                reports[name] = {"table": name, "refused": str(exc)}
            if progress is not None:
                progress(name, done, len(names))
        release = self.gate_release(dag_run=dag_run) if self.release_gate else {}
        for name, report in reports.items():
            if name in release.get("rewritten", {}):
                report.update(release["rewritten"][name])
        return reports

    def gate_release(self, *, dag_run: str | None = None) -> dict[str, Any]:
        """The risk gate over the whole published release: one k per patient across every deidentified table.

        Reads the deidentified zone as it now stands (masked tables: nothing is decrypted, so it covers tables
        published by earlier runs too), runs :func:`~storage_security.deid.risk.enforce_release` and rewrites only
        the tables it changed, each with its report (``release`` added) in the new commit. A release already
        k-anonymous is left untouched: no new table version.

        The gate reads only each table's pseudonym and quasi-identifiers (an event table's other columns stay on
        disk); a table it changed is read whole to be rewritten. A zone the gate already passed as it now stands
        (every table's version and commit time, the gate's settings; :meth:`_gate_state`) is not read again:
        ``{"gated": "unchanged"}``.
        """
        names = self.plake.tables("deidentified")
        specs: dict[str, list[str]] = {}
        for name in names:
            if "patient_pseudonym" in self.plake.schema("deidentified", name).names:
                specs[name] = self._release_qis(name)
        state = self._gate_state(names, specs)
        record = self._gate_record()
        if record is not None and record.is_file() and record.read_text() == state:
            return {"gated": "unchanged", "rewritten": {}}
        tables = {name: self.plake.read("deidentified", name, columns=["patient_pseudonym", *qis],
                                        purpose=_PURPOSE).to_pandas() for name, qis in specs.items()}
        released, release = enforce_release(tables, specs, k=self.settings.deidentify.k_anonymity,
                                            ladders=self._ladders([c for qis in specs.values() for c in qis]),
                                            max_suppression=float(self.config.get("max_suppression", 0.05)))
        del tables, released  # the projections; a changed table is read whole below
        rewritten: dict[str, Any] = {}
        for name in specs:
            if not (release.dropped or any(table == name for table, _ in release.steps)):
                continue
            whole = self.plake.read("deidentified", name, purpose=_PURPOSE)
            table = apply_release(whole, name, release)
            if table is whole:
                continue
            del whole
            try:
                report = published_report(self.plake.lake, name)
            except ValueError:
                report = {"table": name}  # a table another writer put in the zone: it gets the release's facts
            report.pop("version", None)
            report[RELEASE_KEY] = release.to_dict()
            report["rows_out"] = table.num_rows
            # The table's own figures, as it now stands (the release may have suppressed rows or widened columns).
            qis = [c for c in specs[name] if c in table.column_names]
            sensitive = [c for c in report.get("sensitive") or () if c in table.column_names]
            frame = table.select(list(dict.fromkeys(["patient_pseudonym", *qis, *sensitive]))).to_pandas()
            entity = "patient_pseudonym" if frame["patient_pseudonym"].notna().any() else None
            report["k"] = k_anonymity(frame, qis, entity)
            report["l"] = min((l_diversity(frame, qis, c) for c in sensitive), default=None)
            commit = CommitInfo(principal=self.plake.principal, purpose=_PURPOSE, dag_run=dag_run,
                                extra={"release_k": str(release.k),
                                       "release_suppressed_patients": str(release.suppressed_patients),
                                       REPORT_KEY: json.dumps(report, sort_keys=True, default=str)})
            version = self.plake.overwrite_unsealed("deidentified", name, table, commit=commit, evolve_schema=True)
            rewritten[name] = {RELEASE_KEY: report[RELEASE_KEY], "rows_out": table.num_rows, "k": report["k"],
                               "l": report["l"], "version": version}
        if record is not None:
            # The zone as the gate leaves it (its own rewrites included) is a release it passed.
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(self._gate_state(names, specs))
        return {**release.to_dict(), "rewritten": rewritten}

    def _release_qis(self, table: str) -> list[str]:
        """The quasi-identifiers the release gate counts in ``deidentified/<table>``: the catalog's, and those its
        publication found (an uncatalogued age or birth-year column, see :func:`name_quasi_identifiers`)."""
        listed = list((self.config.get("tables") or {}).get(table, {}).get("quasi_identifiers", []))
        try:
            found = published_report(self.plake.lake, table).get("quasi_identifiers") or []
        except ValueError:
            found = []
        present = set(self.plake.schema("deidentified", table).names)
        return [c for c in dict.fromkeys([*listed, *found]) if c in present]

    def _gate_state(self, names: Sequence[str], specs: dict[str, list[str]]) -> str:
        """What the release gate's verdict depends on: every deidentified table's latest commit (version and time:
        a zone rebuilt from scratch has new times), the quasi-identifiers and the gate's settings."""
        tables = {}
        for name in names:
            latest = self.plake.lake.history("deidentified", name, limit=1)[0]
            tables[name] = [int(latest["version"]), latest.get("timestamp")]
        return json.dumps({"lake": self.plake.lake.root, "tables": tables, "specs": specs,
                           "k": self.settings.deidentify.k_anonymity, "ladders": self.config.get("generalize"),
                           "max_suppression": self.config.get("max_suppression"), "gate": _GATE_VERSION},
                          sort_keys=True, default=str)

    def _gate_record(self) -> Any:
        """Where the last release the gate passed is noted: ``$MEDGUARD_HOME/deid/release_<lake digest>.json``.

        A cache, not a verdict: no record, or one for another state of the zone, and the gate runs. (Home, not
        lake: a note in the deidentified zone would be one more table its readers see.)
        """
        home = getattr(self.settings, "home", None)
        if home is None:
            return None
        from pathlib import Path

        lake = hashlib.sha256(str(self.plake.lake.root).encode()).hexdigest()[:16]
        return Path(home) / "deid" / f"release_{lake}.json"

    def _forbidden_names(self) -> tuple[set[str], dict[str, set[str]]]:
        """The real names of the release (lower case) and, per raw.patients batch, the names it brought.

        Surrogate names must never coincide with a real patient's name. The names are decrypted once per version
        of raw.patients, not once per table or per run of a table.
        """
        if not self.plake.exists("raw", "patients"):
            return set(), {}
        version = self.plake.version("raw", "patients")
        if self._names is not None and self._names[0] == version:
            return self._names[1], self._names[2]
        present = self._raw_columns("patients")
        columns = [c for c in ("first_name", "last_name") if c in present]
        if not columns:
            return set(), {}
        names = self.plake.read("raw", "patients", decrypt=columns, version=version, purpose=_PURPOSE,
                                columns=[*columns, *(["_batch_id"] if "_batch_id" in present else [])])
        batches = names.column("_batch_id").to_pylist() if "_batch_id" in present else [""] * names.num_rows
        by_batch: dict[str, set[str]] = {}
        for c in columns:
            for batch, value in zip(batches, names.column(c).to_pylist(), strict=True):
                if value:
                    by_batch.setdefault(str(batch), set()).update(_name_words(str(value)))
        forbidden = set().union(*by_batch.values()) if by_batch else set()
        self._names = (version, forbidden, by_batch)
        return forbidden, by_batch

    def _raw_columns(self, table: str) -> list[str]:
        return list(self.plake.schema("raw", table).names)

    def _last_publication(self, table: str) -> tuple[dict[str, Any], bool] | None:
        """The report of the newest publication of ``table`` and whether it is still the table's latest commit
        (a shred's delete or another writer may have come since), or None if it was never published."""
        if not self.plake.exists("deidentified", table):
            return None
        for rank, entry in enumerate(self.plake.lake.history("deidentified", table, limit=_LEDGER_DEPTH)):
            text = entry.get(f"medguard.{REPORT_KEY}")
            if text is not None:
                report = json.loads(text)
                report["version"] = int(entry["version"])
                return report, rank == 0
        return None

    def publish(self, table: str, *, dag_run: str | None = None, full: bool = False) -> dict[str, Any]:
        """De-identify ``raw/<table>`` into ``deidentified/<table>``; returns the report.

        Incremental by default. The publication ledger (``ledger`` in the report, stored in the Delta commit)
        names the raw version and batches that went out, the crypto-shredded patients (as a digest of their
        pseudonyms) and the masking rules. If none of these changed, nothing is read, decrypted or written
        (``publication: "unchanged"``). If only new raw batches came and the last release kept every masked row as
        it was (no suppression, no generalisation), only the new batches are decrypted, masked and added, and the
        risk gate runs over the whole table: the same rows as a full run. Anything else — ``full``, a shred since
        the last publication, changed rules, a release the gate reshaped, a new patient whose name is a surrogate
        already published — rebuilds the table from the whole raw history (``publication: "full"``).

        Raises:
            RiskGateError: the table cannot meet k-anonymity / l-diversity; nothing is written.
            ValueError: the raw table does not exist.
        """
        if not self.plake.exists("raw", table):
            raise ValueError(f"raw.{table} does not exist")
        source_version = self.plake.version("raw", table)
        protection = self.plake.protection("raw", table)
        present = self._raw_columns(table)
        patient = protection.patient_key if protection else None
        shredded = self.plake.shredded() if patient in present else set()
        state = {"source_version": source_version, "shredded": _digest(sorted(shredded)),
                 "config": _digest(self._gate_settings(table))}
        last = None if full else self._last_publication(table)
        ledger = (last[0].get(LEDGER_KEY) or {}) if last else {}
        if last and all(ledger.get(key) == value for key, value in state.items()):
            return {**last[0], "publication": "unchanged"}
        append = (last is not None and last[1] and ledger.get("appendable") is True and RELEASE_KEY not in last[0]
                  and ledger.get("shredded") == state["shredded"] and ledger.get("config") == state["config"]
                  and {"_batch_id", "_record_hash"} <= set(present))
        if append:
            try:
                return self._publish(table, source_version, protection, shredded, state, dag_run=dag_run,
                                     previous=last[0])
            except _Rebuild:
                pass
        return self._publish(table, source_version, protection, shredded, state, dag_run=dag_run, previous=None)

    def _remask(self, table: str, prior: Any, used: dict[str, dict[str, Any]], hit: set[str],
                previous: dict[str, Any], source_version: int) -> tuple[Any, pd.DataFrame]:
        """The published rows less those of the patients whose notes hold a surrogate in ``hit``, and those
        patients' raw rows of the batches already published (decrypted), to be masked again.

        Raises:
            _Rebuild: the published table has no patient pseudonym to find them by.
        """
        import pyarrow.compute as pc

        column = next(r.get("as", c) for c, r in used.items() if r.get("op") == "notes")
        if column not in prior.column_names or "patient_pseudonym" not in prior.column_names:
            raise _Rebuild
        texts = prior.column(column).to_pylist()
        # Words of published (masked) text, note by note: no Arrow kernel splits text into a set of words.
        touched = [bool(t) and not hit.isdisjoint(_WORD.findall(t.lower())) for t in texts]
        patients = sorted({p for p, t in zip(prior.column("patient_pseudonym").to_pylist(), touched, strict=True)
                           if t and p})
        if not patients:
            return prior, pd.DataFrame()
        keep = pc.invert(pc.is_in(prior.column("patient_pseudonym"), _pa_array(patients)))
        done = previous[LEDGER_KEY]["batches"]
        where = (f"_batch_id IN ({', '.join(_sql_text(b) for b in done)}) AND "
                 f"patient_pseudonym IN ({', '.join(_sql_text(p) for p in patients)})")
        again = self.plake.read("raw", table, decrypt=True, columns=self._published_inputs(table),
                                version=source_version, where=where,
                                purpose=_PURPOSE).to_pandas().drop_duplicates("_record_hash", ignore_index=True)
        return prior.filter(pc.fill_null(keep, True)), again

    def _published_inputs(self, table: str) -> list[str]:
        """The raw columns a publication of ``table`` reads: all but those the catalog drops (a dropped sealed column
        is neither read nor decrypted: at 20,000 patients, observations' ``patient_id`` and ``value_text``), keeping
        the record hash (dedup) and batch id (ledger) and every column the catalog does not know (classified)."""
        rules = table_rules(self.config, table)
        return [c for c in self._raw_columns(table)
                if rules.get(c, {}).get("op") != "drop" or c in ("_record_hash", "_batch_id", "patient_pseudonym")]

    def _gate_settings(self, table: str) -> dict[str, Any]:
        """What a publication of ``table`` depends on besides the raw rows: its rules and the gate's settings."""
        d = self.settings.deidentify
        return {"rules": table_rules(self.config, table), "table": (self.config.get("tables") or {}).get(table, {}),
                "note_entities": self.config.get("note_entities"), "generalize": self.config.get("generalize"),
                "reference_date": str(self.reference_date), "max_suppression": self.config.get("max_suppression"),
                "k": d.k_anonymity, "l": d.l_diversity, "oldest_age": OLDEST_BAND, "named_qis": _NAMED_QIS}

    def _ladders(self, quasi_identifiers: Sequence[str]) -> dict[str, list[Any]]:
        """The catalog's generalisation ladders, and for a quasi-identifier found by its name (an age, or a birth date
        published as an age band) the catalog's age-band ladder: it is generalised as ``age_band`` is. A birth year
        has no ladder but withholding."""
        ladders = {name: list(steps) for name, steps in (self.config.get("generalize") or {}).items()}
        ages = ladders.get("age_band", [5, 10, 20, WITHHELD])
        for column in quasi_identifiers:
            if column not in ladders and name_quasi_identifier(column) in (AGE, BIRTH_DATE):
                ladders[column] = list(ages)
        return ladders

    def _publish(self, table: str, source_version: int, protection: Any, shredded: set[str],
                 state: dict[str, Any], *, dag_run: str | None, previous: dict[str, Any] | None) -> dict[str, Any]:
        """One publication of ``table``: every raw row (``previous`` None) or the batches ``previous`` lacks."""
        patient = protection.patient_key if protection else None
        batches: list[str] = []
        if previous is not None:
            meta = self.plake.read("raw", table, columns=["_batch_id", "_record_hash"], version=source_version,
                                   purpose=_PURPOSE).to_pandas()
            done = set(previous[LEDGER_KEY]["batches"])
            fresh = ~meta["_batch_id"].isin(done)
            batches = sorted(str(b) for b in meta["_batch_id"].dropna().unique())
            new = sorted(str(b) for b in meta.loc[fresh, "_batch_id"].dropna().unique())
            if not new:
                raise _Rebuild  # a new raw version with no new batch (a rewrite): nothing to add to
            seen = set(meta.loc[~fresh, "_record_hash"])
            where = "_batch_id IN (" + ", ".join(_sql_text(b) for b in new) + ")"
            raw = self.plake.read("raw", table, decrypt=True, columns=self._published_inputs(table),
                                  version=source_version, where=where,
                                  purpose=_PURPOSE).to_pandas()
            raw = raw[~raw["_record_hash"].isin(seen)].reset_index(drop=True)
        else:
            raw = self.plake.read("raw", table, decrypt=True, columns=self._published_inputs(table),
                                  version=source_version, purpose=_PURPOSE).to_pandas()
            if "_batch_id" in raw.columns:
                batches = sorted(str(b) for b in raw["_batch_id"].dropna().unique())
        if "_record_hash" in raw.columns:
            # raw keeps a record once per batch that brought it (CSV and FHIR, a re-sent extract): publish it once.
            raw = raw.drop_duplicates("_record_hash", ignore_index=True)
        if shredded and patient in raw.columns:
            # Crypto-shredded patients' rows leave the derived zones (DESIGN.md), not only their sealed cells.
            raw = raw[~raw[patient].isin(shredded)].reset_index(drop=True)
        rules = table_rules(self.config, table)
        spec = (self.config.get("tables") or {}).get(table, {})
        classification = classify(raw, rules, contract_phi=protection.encrypted if protection else (),
                                  detector=self.detector)
        for column in self._raw_columns(table):
            if column not in classification.columns and column in rules:
                # Dropped by the catalog, so never read: its class is the catalog's all the same.
                classification.columns[column] = Classified(column, ColumnClass(rules[column]["class"]), "config")
        used = dict(rules)
        for column, found in classification.columns.items():
            if found.source != "config":
                # Flagged PHI is dropped; a column the scan cleared is published as it is.
                used[column] = {"class": found.klass,
                                "op": "drop" if found.klass is ColumnClass.DIRECT_IDENTIFIER else "keep"}
        linked = "patient_pseudonym" in raw.columns and bool(raw["patient_pseudonym"].notna().any())
        named = _named_quasi_identifiers(used, classification.unknown, linked=linked)
        if previous is not None and _digest(used) != previous[LEDGER_KEY].get("used"):
            raise _Rebuild  # the new rows classify otherwise (a newly flagged column): every row again
        forbidden, by_batch = self._forbidden_names() if _has_notes(used) else (set(), {})
        prior = None
        if previous is not None:
            prior = self.plake.read("deidentified", table, purpose=_PURPOSE)
            hit = _reused(previous[LEDGER_KEY].get("surrogates", []), by_batch,
                          previous[LEDGER_KEY].get("name_batches", [])) if _has_notes(used) else set()
            if hit:
                # A new patient's name is a surrogate already published: a full run would pick another one for
                # the notes that used it, so those notes' patients are decrypted and masked again.
                prior, again = self._remask(table, prior, used, hit, previous, source_version)
                raw = pd.concat([again, raw], ignore_index=True)
        keys = MaskingKeys(self.plake.pseudonymizer, forbidden_names=forbidden)
        masker = None
        if _has_notes(used):
            entity_ops = dict(self.config.get("note_entities") or {"default": "surrogate"})
            masker = NoteMasker(self.detector, keys, entity_ops)
        note_spans = None
        spark_rows = int(self.config.get("spark_min_rows", 50_000))
        detection = "local"
        if masker is not None:
            text_column = next(c for c, r in used.items() if r.get("op") == "notes")
            if len(raw) >= spark_rows:
                # Large note tables: detection (the costly part) runs on Spark, one engine per executor.
                from storage_security.deid.spark import detect_notes

                note_spans = detect_notes(self.settings, raw[text_column].tolist())
                detection = "spark"
            elif self.settings.deidentify.processes > 1 and len(raw) >= _POOL_MIN_NOTES:
                note_spans, detection = _detect_in_pool(raw[text_column].tolist(),
                                                        self.settings.deidentify.processes)
        if masker is None and self.settings.compute == "spark" and len(raw) >= spark_rows:
            # Large structured tables on a Spark cluster: masking runs per batch on the executors.
            from storage_security.deid.spark import mask_table_spark

            masked = mask_table_spark(self.settings, raw, used, reference_date=self.reference_date)
            masking = "spark"
        else:
            masked = mask_table(raw, used, keys, reference_date=self.reference_date, note_masker=masker,
                                note_spans=note_spans)
            masking = "local"
        # The decrypted rows are not needed past masking: let them go before the gate and the write (peak memory).
        raw_columns, rows_decrypted = list(raw.columns), len(raw)
        del raw
        if prior is not None:
            # The release kept every masked row as it was: the earlier rows plus the new ones are a full run's rows.
            added = _arrow(masked)
            added = added.cast(prior.schema) if set(added.column_names) == set(prior.column_names) else None
            if added is None:
                raise _Rebuild
            masked = _concat([prior, added.select(prior.column_names)]).to_pandas()
        # Safe Harbor: no published age above 89. Catalog tables publish birth dates only as bands (90+ pooled); a
        # research table's own age column is published as it is, so its ages of 90 and over are pooled here.
        masked = _as_numbers(masked, {used[c].get("as", c): used[c]["named"] for c in raw_columns
                                      if used.get(c, {}).get("named") in (AGE, BIRTH_YEAR)})
        masked, ages_pooled = _pool_oldest_ages(masked)
        masked, years_pooled = _pool_oldest_birth_years(masked, self.reference_date)
        if "patient_pseudonym" in masked.columns and masked["patient_pseudonym"].isna().all():
            # Rows linked to no patient (a research table without an id column): no empty link column is published,
            # so every row is its own individual to the risk gate and to training.
            masked = masked.drop(columns="patient_pseudonym")
        qis = list(dict.fromkeys([*spec.get("quasi_identifiers", []), *named]))
        published, risk = enforce(masked, qis, spec.get("sensitive", []),
                                  k=self.settings.deidentify.k_anonymity, ell=self.settings.deidentify.l_diversity,
                                  ladders=self._ladders(qis),
                                  max_suppression=float(self.config.get("max_suppression", 0.05)),
                                  entity="patient_pseudonym")
        column_classes = {used[c].get("as", c): published_class(used[c]) for c in raw_columns
                          if used.get(c, {}).get("op") != "drop"}
        report = {"table": table, "column_classes": column_classes,
                  "source_classes": classification.classes(), "flagged_columns": classification.flagged,
                  "scanned": classification.to_dict()["scanned"], **risk.to_dict()}
        report["masking"] = masking
        if ages_pooled:
            report["ages_pooled"] = ages_pooled
        if years_pooled:
            report["birth_years_pooled"] = years_pooled
        if any(rule.get("named") for rule in used.values()):
            report["named_quasi_identifiers"] = {used[c].get("as", c): used[c]["named"] for c in raw_columns
                                                 if used.get(c, {}).get("named")}
        report["publication"] = "incremental" if previous is not None else "full"
        report["rows_decrypted"] = rows_decrypted
        surrogates = set(keys.issued) | set((previous or {}).get(LEDGER_KEY, {}).get("surrogates", []))
        report[LEDGER_KEY] = {**state, "batches": batches, "used": _digest(used), "name_batches": sorted(by_batch),
                              "surrogates": sorted(surrogates),
                              "appendable": not risk.suppressed and not risk.generalization}
        if masker is not None:
            report["notes_detection"] = detection
        # The release's facts ride in its commit; the one audited write (the lake's access hook) records the short
        # ones in its event, the whole report stays in the commit's metadata.
        facts = {"k": str(risk.k), "l": str(risk.l_diversity), "suppressed": str(risk.suppressed),
                 "flagged_columns": ",".join(classification.flagged), "source_version": str(source_version)}
        commit = CommitInfo(principal=self.plake.principal, purpose=_PURPOSE, dag_run=dag_run,
                            extra={**facts, REPORT_KEY: json.dumps(report, sort_keys=True, default=str)})
        arrow = _arrow(published)
        del masked, published
        report["version"] = self.plake.overwrite_unsealed("deidentified", table, arrow, commit=commit,
                                                          evolve_schema=True)
        return report


class _Rebuild(Exception):
    """An incremental publication found it cannot give a full run's result: rebuild from the whole raw history."""


_LEDGER_DEPTH = 20
_NAMED_QIS = 1  # how columns are found quasi-identifiers by name: a change rebuilds every table once
_GATE_VERSION = 2  # the gate's own logic: a change here makes the next run gate the zone again
_WORD = re.compile(r"[a-z][a-z'\-]*")
_POOL_MIN_NOTES = 2_000  # below this, spawning workers that each load spaCy costs more than it saves


def _digest(value: Any) -> str:
    # Of rules, settings and batch names, or of pseudonyms (keyed already): nothing here is record content.
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _pool_oldest_ages(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` with every age of 90 and over in a column named for ages pooled into one category
    (:func:`~storage_security.deid.operators.top_code_ages`), and per column how many values were pooled."""
    import pyarrow as pa

    pooled: dict[str, int] = {}
    out = frame
    for column in frame.columns:
        if not is_age_column(str(column)):
            continue
        try:
            values = pa.Array.from_pandas(frame[column])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Mixed numbers and text in one column: read as text, so "93" and 93 are both found.
            values = pa.array([None if pd.isna(v) else str(v) for v in frame[column]], pa.string())
        coded, count = top_code_ages(values)
        if count:
            out = out.copy() if out is frame else out
            out[column] = pd.Series(coded.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get),
                                    index=frame.index)
            pooled[str(column)] = count
    return out, pooled


def _named_quasi_identifiers(used: dict[str, dict[str, Any]], unknown: Sequence[str], *,
                             linked: bool) -> list[str]:
    """Make the columns the catalog does not know whose name says they hold an age, a birth year or a birth date
    quasi-identifiers (``used`` is changed in place); returns their published names when the table is linked to
    patients (the risk gate counts them then).

    Whether the scan or the contract found them PHI or not (a scan finds dates in birth years and not in ages), they
    are published as Safe Harbor allows and the catalog publishes ``birth_date``: a birth date only as an age band at
    the reference date (``<column>_age_band``); an age or a birth year as a number (:func:`_as_numbers`), the oldest
    values pooled (:func:`_pool_oldest_ages`, :func:`_pool_oldest_birth_years`), generalised by the gate when k needs
    it. In a table linked to no patient every row is its own individual, counted as one; such a table's ages are
    pooled but not counted in k.
    """
    found = []
    for column in unknown:
        kind = name_quasi_identifier(column)
        if kind is None:
            continue
        rule: dict[str, Any] = {"class": ColumnClass.QUASI_IDENTIFIER, "op": "keep",
                                "published_class": ColumnClass.QUASI_IDENTIFIER.value, "named": kind}
        if kind == BIRTH_DATE:
            rule.update(op="age_band", **{"as": f"{column}_age_band"})
        used[column] = rule
        found.append(rule.get("as", column))
    return found if linked else []


def _as_numbers(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """``frame`` with each column of ``kinds`` (an age or a birth year found by its name) as whole numbers: the
    leading number of a text ("47 years" → 47; "1950-03-04" → 1950 as a birth year), null where there is none, so
    nothing but the number is published."""
    out = frame
    for column, kind in kinds.items():
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            continue
        pattern = r"^\s*(\d{4})\b" if kind == BIRTH_YEAR else r"^\s*(\d{1,3})(?:\.\d*)?\b"
        out = out.copy() if out is frame else out
        out[column] = pd.to_numeric(values.astype("string").str.extract(pattern, expand=False),
                                    errors="coerce").astype("Int64")
    return out


def _pool_oldest_birth_years(frame: pd.DataFrame, reference: date) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` with every birth year that may mean an age of 90 or over at ``reference`` pooled into one value, in
    each column named for birth years (:func:`~storage_security.deid.classification.name_quasi_identifier`).

    Safe Harbor's oldest category, for years: a year up to ``reference.year - 90`` becomes that year ("in or before"):
    a number in a numeric column, ``"<year> or earlier"`` in text. Returns the frame and per column how many pooled.
    """
    limit = reference.year - OLDEST_BAND
    pooled: dict[str, int] = {}
    out = frame
    for column in frame.columns:
        if name_quasi_identifier(str(column)) != BIRTH_YEAR:
            continue
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            old = values.notna() & (values <= limit)
            coded = values.where(~old, limit)
        else:
            years = pd.to_numeric(values.astype("string").str.extract(r"^\s*(\d{4})\b", expand=False),
                                  errors="coerce")
            old = years.notna() & (years <= limit) & (values.astype("string") != f"{limit} or earlier")
            coded = values.astype(object).where(~old.fillna(False).astype(bool), f"{limit} or earlier")
        count = int(old.fillna(False).astype(bool).sum())
        if count:
            out = out.copy() if out is frame else out
            out[column] = coded
            pooled[str(column)] = count
    return out, pooled


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _name_words(value: str) -> set[str]:
    low = value.lower()
    return {low, *low.split()}


def _reused(surrogates: Sequence[str], by_batch: dict[str, set[str]], name_batches: Sequence[str]) -> set[str]:
    """The real names that came after the last publication and are surrogates that publication handed out.

    A surrogate is never a real name of its release; a patient who arrived since may carry a name that an earlier
    note's surrogate already is, and a full run would then pick another one for those notes.
    """
    known = set(name_batches)
    new = set().union(*(words for batch, words in by_batch.items() if batch not in known)) if by_batch else set()
    return new & {w.lower() for w in surrogates}


def _detect_in_pool(texts: Sequence[Any], processes: int) -> tuple[list[list[Any]], str]:
    """PHI spans of each text over the detector pool (``processes`` spawned workers, one Presidio engine each)."""
    from storage_security.deid.detection import detect_many

    present = [i for i, t in enumerate(texts) if t is not None]
    found = detect_many([str(texts[i]) for i in present], processes=processes)
    spans: list[list[Any]] = [[] for _ in texts]
    for i, s in zip(present, found, strict=True):
        spans[i] = s
    return spans, f"pool of {processes} processes"


def published_class(rule: dict[str, Any]) -> str:
    """The class of a column *as published*: the column catalog's (the rule carries it, see
    :func:`pipeline.catalog.published_class`); a column the catalog does not know keeps the class it was found to
    have."""
    return rule.get("published_class") or rule["class"]


def _has_notes(rules: dict[str, dict[str, Any]]) -> bool:
    return any(rule.get("op") == "notes" for rule in rules.values())


def _pa_array(values: Sequence[Any]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def _concat(tables: Sequence[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_tables(tables)


def _arrow(frame: pd.DataFrame) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def publish_raw_zone(tables: Sequence[str] | None = None, *, settings: Settings | None = None,
                     dag_run: str | None = None, full: bool = False,
                     progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Publish the raw zone's tables (all of them by default) with the settings' key provider; a summary per table.

    The entry point of the DAG and of ``medguard deidentify``; ``progress`` as in :meth:`Deidentifier.publish_all`.
    """
    from pipeline.settings import get_settings

    settings = settings or get_settings()
    reports = Deidentifier.from_settings(settings).publish_all(tables, dag_run=dag_run, full=full,
                                                               progress=progress)
    return {name: summary(report) for name, report in reports.items()}


def publish_raw_zone_or_fail(*, settings: Settings | None = None, dag_run: str | None = None) -> dict[str, Any]:
    """:func:`publish_raw_zone` for a DAG task: every table that can be published is; then a refusal fails the task.

    Raises:
        RiskGateError: naming the tables the risk gate refused.
    """
    result = publish_raw_zone(settings=settings, dag_run=dag_run)
    if refused(result):
        raise RiskGateError(f"not published (risk gate): {refused(result)}")
    return result


def refused(result: dict[str, Any]) -> dict[str, str]:
    """The tables of a :func:`publish_raw_zone` result that the risk gate refused, with the reason."""
    return {name: r["refused"] for name, r in result.items() if r.get("refused")}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a table's report."""
    if "refused" in report:
        return {"refused": report["refused"]}
    return {key: report.get(key) for key in ("version", "rows_in", "rows_out", "k", "l", "suppressed",
                                              "generalization", "flagged_columns", RELEASE_KEY,
                                              "publication", "rows_decrypted")}


def demo_step(settings: Settings) -> dict[str, Any]:
    """``medguard demo`` step ``40_deidentify``: the ``medguard_deidentify`` DAG, then each published table's report
    read back from the lake, then detection scored on the demo's labelled notes against vanilla Presidio.
    """
    from pipeline.demo import DEMO_SOURCES, run_dag_step
    from storage_security.deid.evaluation import evaluate, load_labelled_notes

    out: dict[str, Any] = {"dag_run": run_dag_step(settings, "medguard_deidentify")}
    lake = Lake(settings)
    out["published"] = {table: summary(published_report(lake, table)) for table in lake.tables("deidentified")}
    notes_file = settings.home / DEMO_SOURCES / "notes.jsonl"
    if notes_file.exists():
        notes = load_labelled_notes(notes_file, limit=500)
        ours = evaluate(notes, processes=settings.deidentify.processes)
        vanilla = evaluate(notes, processes=settings.deidentify.processes, kind="vanilla")
        out["evaluation"] = {"notes": len(notes), "medguard": ours.overall, "vanilla_presidio": vanilla.overall,
                             "min_recall_per_label": min(v["recall"] for v in ours.per_label.values()
                                                         if v["recall"] is not None)}
    return out
