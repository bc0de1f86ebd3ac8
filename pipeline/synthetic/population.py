"""Vectorised generation of one chunk of the synthetic population: patients and their clinical records.

The diagnostic label is new-onset type 2 diabetes within a year of the index date (2025-01-01), drawn from a
logistic risk model over simulated physiology, so that models trained on the features have a real signal:

    logit p = -3.0 + 2.4·(HbA1c − 5.7) + 0.09·(BMI − 28) + 0.025·(age − 50) + 0.5·hypertension
              + 0.004·(triglycerides − 150) − 0.02·(HDL − 50)

Patients whose HbA1c is already ≥ 6.5 % carry a type 2 diabetes diagnosis at the index date
(``prevalent_t2d``); their ``t2d_within_1y`` label is null. HbA1c and glucose of future cases drift upwards
across their visits (about +0.35 %/year), so trends carry signal as well as last values.
Every chunk is a pure function of (seed, chunk index, first patient index): same inputs, same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.synthetic.reference import (
    BACKGROUND_CONDITIONS,
    CONDITIONS,
    EMAIL_DOMAINS,
    ENCOUNTER_TYPES,
    FACILITIES,
    INDEX_DATE,
    INSURERS,
    LABS,
    MEASURES,
    MEDICATIONS,
    VITALS,
    pools,
)

TABLES = ("patients", "encounters", "observations", "conditions", "medications", "outcomes")

_SSN_AREAS = np.array([a for a in range(1, 900) if a != 666])
_SSN_SPACE = len(_SSN_AREAS) * 99 * 9999
# Multipliers coprime with their moduli: index → identifier is a bijection, so identifiers never collide.
_SSN_MULT = 2_654_435_761
_MRN_MULT, _MRN_SPACE = 48_271, 10**8
_MEMBER_MULT, _MEMBER_SPACE = 69_621, 10**9


@dataclass(frozen=True)
class Provider:
    """A clinician who signs encounters and notes."""

    npi: str
    first: str
    last: str
    facility: str


def _luhn_check_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10


def npi_with_check_digit(base9: str) -> str:
    """A 10-digit NPI whose last digit is the Luhn check over the 80840 prefix, as CMS defines it."""
    return base9 + str(_luhn_check_digit("80840" + base9))


def providers(seed: int, per_facility: int = 8) -> list[Provider]:
    """The clinicians of the simulated facilities, deterministic per seed."""
    rng = np.random.default_rng([seed, 0xC11])
    p = pools()
    result = []
    for facility in FACILITIES:
        for _ in range(per_facility):
            base = str(rng.integers(1, 3)) + "".join(str(d) for d in rng.integers(0, 10, 8))
            first = rng.choice(p.female_first if rng.random() < 0.5 else p.male_first)
            result.append(Provider(npi_with_check_digit(base), str(first), str(rng.choice(p.last)), facility))
    return result


def _fmt(values: np.ndarray, template: str) -> np.ndarray:
    return np.array([template.format(v) for v in values.tolist()], dtype=object)


def _ssns(idx: np.ndarray, seed: int) -> np.ndarray:
    v = (idx.astype(np.int64) * _SSN_MULT + seed * 7919) % _SSN_SPACE
    area = _SSN_AREAS[v // (99 * 9999)]
    group = (v // 9999) % 99 + 1
    serial = v % 9999 + 1
    return np.array([f"{a:03d}-{g:02d}-{s:04d}" for a, g, s in zip(area, group, serial, strict=True)], dtype=object)


def _iso_date(days: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(days.astype("datetime64[D]"), unit="D").astype(object)


def _iso_time(seconds: np.ndarray) -> np.ndarray:
    return (np.char.add(np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s"), "Z")).astype(object)


_CONDITION_COLUMNS = ["condition_id", "patient_id", "encounter_id", "code", "code_system", "icd10_code",
                      "description", "onset_date", "clinical_status"]
_MEDICATION_COLUMNS = ["medication_id", "patient_id", "encounter_id", "kind", "code", "code_system", "ndc_code",
                       "rxnorm_code", "medication", "dosage", "start_date", "status"]


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    # A tiny chunk can have no medications at all; keep the columns so downstream code needs no special case.
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: pd.Series(dtype=object)
                                                                             for c in columns})


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def patient_id_template(seed: int) -> str:
    """The format of a patient id of population ``seed``: ``PAT<seed>-<index, 8 digits>`` (``PAT11-00000042``).

    Ids are namespaced by seed so that two populations loaded into one lake never share a patient id (two
    generated people under one id would be an identity conflict); the same seed gives the same ids. Encounter ids
    (``ENC<seed>-…``) and the ids built from these (conditions, medications, observations, notes) follow.
    """
    return f"PAT{seed}-" + "{:08d}"


def generate_chunk(seed: int, chunk_index: int, start: int, count: int) -> dict[str, pd.DataFrame]:
    """The clean (defect-free) tables for patients ``start .. start+count-1``.

    Returns:
        A DataFrame per name in :data:`TABLES`; dates and times are ISO-8601 strings, as in an EHR export.
    """
    rng = np.random.default_rng([seed, chunk_index, 0xA11])
    p = pools()
    idx = np.arange(start, start + count, dtype=np.int64)
    n = count

    female = rng.random(n) < 0.51
    age = np.clip(rng.normal(52, 18, n), 18, 101)
    oldest = rng.random(n) < 0.02  # enough patients over 89 for Safe Harbor's age rule to matter
    age[oldest] = rng.uniform(90, 101, int(oldest.sum()))
    birth = INDEX_DATE - (age * 365.25).astype(np.int64).astype("timedelta64[D]") - rng.integers(
        0, 365, n).astype("timedelta64[D]")
    first = np.where(female, rng.choice(p.female_first, n, p=p.female_p), rng.choice(p.male_first, n, p=p.male_p))
    last = rng.choice(p.last, n, p=p.last_p)
    city_i = rng.choice(len(p.city), n, p=p.city_p)
    zip5 = np.array([z[:3] for z in p.zip[city_i]], dtype=object) + _fmt(rng.integers(0, 100, n), "{:02d}")
    street = (_fmt(rng.integers(1, 9999, n), "{}") + " " + rng.choice(p.street_names, n) + " "
              + rng.choice(p.street_suffixes, n))
    phone = (p.area_code[city_i] + "-" + _fmt(rng.integers(200, 999, n), "{:03d}") + "-"
             + _fmt(rng.integers(0, 10000, n), "{:04d}"))
    email = (np.char.lower(first.astype(str)).astype(object) + "." + np.char.lower(last.astype(str)).astype(object)
             + _fmt(rng.integers(1, 99, n), "{:02d}") + "@" + rng.choice(EMAIL_DOMAINS, n))
    mrn = _fmt((idx * _MRN_MULT + seed * 104_729) % _MRN_SPACE, "{:08d}")
    member = rng.choice(INSURERS, n) + _fmt((idx * _MEMBER_MULT + seed * 15_485_863) % _MEMBER_SPACE, "{:09d}")
    facility = rng.choice(list(FACILITIES), n, p=[0.35, 0.3, 0.2, 0.15])
    patient_id = _fmt(idx, patient_id_template(seed))

    # Physiology (patient-level latent values).
    height = np.where(female, rng.normal(162, 6.5, n), rng.normal(176, 7, n))
    bmi = np.clip(rng.normal(27.5 + 0.04 * (age - 50), 5.5, n), 16, 60)
    weight = bmi * (height / 100) ** 2
    hba1c = 5.35 + 0.035 * (bmi - 27) + 0.008 * (age - 50) + rng.normal(0, 0.35, n)
    hba1c += rng.exponential(0.45, n) * (bmi > 30)
    sbp = 118 + 0.45 * (age - 50) + 0.6 * (bmi - 27) + rng.normal(0, 12, n)
    dbp = 0.45 * sbp + rng.normal(22, 6, n)
    hr = rng.normal(74, 10, n)
    hdl = np.clip(rng.normal(55 - 0.5 * (bmi - 27) + 8 * female, 12, n), 20, 120)
    tg = np.clip(rng.lognormal(np.log(130 + 4 * (bmi - 27).clip(0)), 0.4, n), 40, 1500)
    chol = np.clip(rng.normal(195, 35, n), 100, 400)
    ldl = np.clip(chol - hdl - tg / 5, 30, 300)
    creat = np.clip(np.where(female, rng.normal(0.8, 0.17, n), rng.normal(1.0, 0.2, n)) + 0.004 * (age - 50)
                    + rng.exponential(0.05, n), 0.3, 8)

    prevalent = hba1c >= 6.5
    htn = (sbp >= 140) | (rng.random(n) < 0.05)
    z = (-3.0 + 2.4 * (hba1c - 5.7) + 0.09 * (bmi - 28) + 0.025 * (age - 50) + 0.5 * htn
         + 0.004 * (tg - 150) - 0.02 * (hdl - 50))
    incident = (~prevalent) & (rng.random(n) < _sigmoid(z))
    hba1c_slope = np.where(incident, 0.35, 0.02) + rng.normal(0, 0.05, n)  # %/year, towards the index date
    glucose = 28.7 * hba1c - 46.7 + rng.normal(0, 10, n)
    latent = {"systolic_bp": sbp, "diastolic_bp": dbp, "heart_rate": hr, "body_weight": weight,
              "body_height": height, "bmi": bmi, "glucose": glucose, "hba1c": hba1c, "cholesterol": chol,
              "hdl": hdl, "ldl": ldl, "triglycerides": tg, "creatinine": creat}
    noise = {"systolic_bp": 8, "diastolic_bp": 6, "heart_rate": 7, "body_weight": 1.2, "body_height": 0.4,
             "bmi": 0.4, "glucose": 12, "hba1c": 0.15, "cholesterol": 12, "hdl": 4, "ldl": 10,
             "triglycerides": 25, "creatinine": 0.06}
    slope = {"hba1c": hba1c_slope, "glucose": 28.7 * hba1c_slope}

    patients = pd.DataFrame({
        "patient_id": patient_id, "mrn": mrn, "first_name": first, "last_name": last,
        "sex": np.where(female, "F", "M").astype(object), "birth_date": _iso_date(birth), "ssn": _ssns(idx, seed),
        "address": street, "city": p.city[city_i], "state": p.state[city_i], "zip": zip5, "phone": phone,
        "email": email, "insurance_member_id": member, "facility_id": facility,
        "consent_research": rng.random(n) < 0.92,
    })

    # Encounters over the two years before the index date.
    n_enc = np.minimum(1 + rng.poisson(2.0, n), 8)
    pat_of_enc = np.repeat(np.arange(n), n_enc)
    first_enc = np.r_[0, np.cumsum(n_enc)[:-1]]
    m = len(pat_of_enc)
    ordinal = np.arange(m) - np.repeat(first_enc, n_enc)
    raw_offset = rng.integers(1, 730, m)
    # Within each patient, visits run from the earliest (largest offset before the index date) to the latest.
    day_offset = raw_offset[np.lexsort((-raw_offset, pat_of_enc))]
    admit = (INDEX_DATE - day_offset.astype("timedelta64[D]")).astype("datetime64[s]") + (
        rng.integers(7 * 3600, 20 * 3600, m)).astype("timedelta64[s]")
    enc_type = rng.choice(list(ENCOUNTER_TYPES), m, p=[0.8, 0.12, 0.08])
    stay = np.select([enc_type == "AMB", enc_type == "EMER"],
                     [rng.integers(20 * 60, 90 * 60, m), rng.integers(2 * 3600, 10 * 3600, m)],
                     rng.integers(86_400, 7 * 86_400, m))
    discharge = admit + stay.astype("timedelta64[s]")
    staff = providers(seed)
    staff_by_fac = {f: [s for s in staff if s.facility == f] for f in FACILITIES}
    enc_fac = facility[pat_of_enc]
    prov_pick = rng.integers(0, 8, m)
    npi = np.array([staff_by_fac[f][k].npi for f, k in zip(enc_fac, prov_pick, strict=True)], dtype=object)
    encounter_id = np.array([f"ENC{seed}-{i:08d}{k:02d}" for i, k in zip(idx[pat_of_enc], ordinal, strict=True)],
                            dtype=object)
    encounters = pd.DataFrame({
        "encounter_id": encounter_id, "patient_id": patient_id[pat_of_enc], "facility_id": enc_fac,
        "encounter_type": enc_type, "admit_time": _iso_time(admit), "discharge_time": _iso_time(discharge),
        "provider_npi": npi,
    })

    # Observations: all vitals at every encounter, a lab panel at about 60 % of them.
    has_labs = rng.random(m) < 0.6
    has_labs[np.r_[np.cumsum(n_enc) - 1]] = True  # the latest visit always has labs
    frames = []
    years_before = day_offset / 365.25
    for names, mask in ((VITALS, np.ones(m, dtype=bool)), (LABS, has_labs)):
        enc_rows = np.flatnonzero(mask)
        for name in names:
            measure = MEASURES[name]
            pats = pat_of_enc[enc_rows]
            value = latent[name][pats] + rng.normal(0, noise[name], len(enc_rows))
            if name in slope:
                value -= slope[name][pats] * years_before[enc_rows]
            value = np.round(np.clip(value, measure.low, measure.high), measure.decimals)
            frames.append(pd.DataFrame({
                "observation_id": encounter_id[enc_rows] + "-" + measure.loinc,
                "patient_id": patient_id[pats], "encounter_id": encounter_id[enc_rows],
                "category": measure.kind, "code": measure.loinc, "code_system": "loinc", "loinc_code": measure.loinc,
                "display": measure.name,
                "value": value, "unit": measure.unit, "effective_time": _iso_time(admit[enc_rows]),
            }))
    observations = pd.concat(frames, ignore_index=True)
    observations = observations.sort_values(["encounter_id", "loinc_code"], kind="stable", ignore_index=True)

    # Conditions known at the index date, and the drugs prescribed for them.
    has = {
        "t2d": prevalent & (hba1c < 9), "t2d_hyperglycemia": prevalent & (hba1c >= 9),
        "prediabetes": (~prevalent) & (hba1c >= 5.7) & (rng.random(n) < 0.5),
        "hypertension": htn, "hyperlipidemia": (ldl >= 160) | (chol >= 240),
        "obesity": (bmi >= 30) & (rng.random(n) < 0.6), "ckd3": creat > 1.5,
    }
    for key, rate in BACKGROUND_CONDITIONS.items():
        has[key] = rng.random(n) < rate
    cond_frames, med_frames = [], []
    for key, mask in has.items():
        rows = np.flatnonzero(mask)
        if not len(rows):
            continue
        cond = CONDITIONS[key]
        onset = INDEX_DATE - rng.integers(30, 5 * 365, len(rows)).astype("timedelta64[D]")
        cond_frames.append(pd.DataFrame({
            "condition_id": patient_id[rows] + "-" + cond.code, "patient_id": patient_id[rows],
            "encounter_id": encounter_id[first_enc[rows]], "code": cond.code, "code_system": "icd10cm",
            "icd10_code": cond.code,
            "description": cond.description, "onset_date": _iso_date(onset), "clinical_status": "active",
        }))
        for med in (m_ for m_ in MEDICATIONS if m_.for_condition == key):
            treated = rows[rng.random(len(rows)) < 0.8]
            if not len(treated):
                continue
            started = INDEX_DATE - rng.integers(1, 4 * 365, len(treated)).astype("timedelta64[D]")
            med_frames.append(pd.DataFrame({
                "medication_id": patient_id[treated] + "-" + med.ndc, "patient_id": patient_id[treated],
                "encounter_id": encounter_id[first_enc[treated]], "kind": "request", "code": med.rxnorm,
                "code_system": "rxnorm", "ndc_code": med.ndc, "rxnorm_code": med.rxnorm,
                "medication": med.name, "dosage": med.dose, "start_date": _iso_date(started), "status": "active",
            }))
    conditions = _concat(cond_frames, _CONDITION_COLUMNS).sort_values("condition_id", ignore_index=True)
    medications = _concat(med_frames, _MEDICATION_COLUMNS).sort_values("medication_id", ignore_index=True)

    outcomes = pd.DataFrame({
        "patient_id": patient_id, "index_date": str(INDEX_DATE), "prevalent_t2d": prevalent,
        "t2d_within_1y": pd.array(np.where(prevalent, None, incident), dtype="boolean"),
    })
    return {"patients": patients, "encounters": encounters, "observations": observations,
            "conditions": conditions, "medications": medications, "outcomes": outcomes}
