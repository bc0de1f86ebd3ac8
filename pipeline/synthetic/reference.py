"""Reference code lists and name pools the synthetic population draws from (LOINC, ICD-10-CM, NDC, places).

Names come from Faker's en_US frequency tables and places from a shipped list of real US cities with a ZIP
and area code each, including several of the low-population 3-digit ZIP prefixes that HIPAA Safe Harbor
requires to be generalised to 000.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
from faker.providers.address.en_US import Provider as _Address
from faker.providers.person.en_US import Provider as _Person

# A fixed reference date makes the population independent of the day it is generated.
INDEX_DATE = np.datetime64("2025-01-01")


@dataclass(frozen=True)
class Measure:
    """A vital sign or lab with its LOINC code, UCUM unit and plausible physiological range."""

    loinc: str
    name: str
    unit: str
    low: float
    high: float
    decimals: int
    kind: str  # "vital-signs" or "laboratory"


MEASURES: dict[str, Measure] = {
    "systolic_bp": Measure("8480-6", "Systolic blood pressure", "mm[Hg]", 60, 260, 0, "vital-signs"),
    "diastolic_bp": Measure("8462-4", "Diastolic blood pressure", "mm[Hg]", 30, 160, 0, "vital-signs"),
    "heart_rate": Measure("8867-4", "Heart rate", "/min", 25, 250, 0, "vital-signs"),
    "body_weight": Measure("29463-7", "Body weight", "kg", 25, 350, 1, "vital-signs"),
    "body_height": Measure("8302-2", "Body height", "cm", 120, 230, 1, "vital-signs"),
    "bmi": Measure("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 10, 90, 1, "vital-signs"),
    "glucose": Measure("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 20, 1000, 0, "laboratory"),
    "hba1c": Measure("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 3, 20, 1, "laboratory"),
    "cholesterol": Measure("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 50, 600, 0,
                           "laboratory"),
    "hdl": Measure("2085-9", "HDL Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 5, 200, 0, "laboratory"),
    "ldl": Measure("13457-7", "LDL Cholesterol [Mass/volume] in Serum or Plasma by calculation", "mg/dL", 10, 400,
                   0, "laboratory"),
    "triglycerides": Measure("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 20, 3000, 0,
                             "laboratory"),
    "creatinine": Measure("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.2, 15, 2,
                          "laboratory"),
}
VITALS = [k for k, m in MEASURES.items() if m.kind == "vital-signs"]
LABS = [k for k, m in MEASURES.items() if m.kind == "laboratory"]


@dataclass(frozen=True)
class Condition:
    """An ICD-10-CM diagnosis."""

    code: str
    description: str


CONDITIONS: dict[str, Condition] = {
    "t2d": Condition("E11.9", "Type 2 diabetes mellitus without complications"),
    "t2d_hyperglycemia": Condition("E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
    "prediabetes": Condition("R73.03", "Prediabetes"),
    "hypertension": Condition("I10", "Essential (primary) hypertension"),
    "hyperlipidemia": Condition("E78.5", "Hyperlipidemia, unspecified"),
    "obesity": Condition("E66.9", "Obesity, unspecified"),
    "ckd3": Condition("N18.30", "Chronic kidney disease, stage 3 unspecified"),
    "asthma": Condition("J45.909", "Unspecified asthma, uncomplicated"),
    "depression": Condition("F32.9", "Major depressive disorder, single episode, unspecified"),
    "hypothyroidism": Condition("E03.9", "Hypothyroidism, unspecified"),
    "gerd": Condition("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    "low_back_pain": Condition("M54.50", "Low back pain, unspecified"),
    "sleep_apnea": Condition("G47.33", "Obstructive sleep apnea (adult) (pediatric)"),
    "afib": Condition("I48.91", "Unspecified atrial fibrillation"),
    "cad": Condition("I25.10", "Atherosclerotic heart disease of native coronary artery without angina pectoris"),
}
# Background prevalence of conditions that do not follow from the simulated physiology.
BACKGROUND_CONDITIONS = {
    "asthma": 0.08, "depression": 0.10, "hypothyroidism": 0.06, "gerd": 0.12, "low_back_pain": 0.10,
    "sleep_apnea": 0.05, "afib": 0.03, "cad": 0.05,
}


@dataclass(frozen=True)
class Medication:
    """A drug product with its NDC (5-4-2) and RxNorm code, prescribed for a condition."""

    ndc: str
    rxnorm: str
    name: str
    dose: str
    for_condition: str


MEDICATIONS: list[Medication] = [
    Medication("00093-1048-01", "861007", "Metformin hydrochloride 500 MG Oral Tablet", "500 mg twice daily", "t2d"),
    Medication("00088-2220-33", "311041", "Insulin glargine 100 UNT/ML Injectable Solution", "10 units nightly",
               "t2d_hyperglycemia"),
    Medication("68180-0513-01", "314076", "Lisinopril 10 MG Oral Tablet", "10 mg daily", "hypertension"),
    Medication("00093-7155-98", "197361", "Amlodipine 5 MG Oral Tablet", "5 mg daily", "hypertension"),
    Medication("00071-0155-23", "617312", "Atorvastatin 20 MG Oral Tablet", "20 mg daily", "hyperlipidemia"),
    Medication("00173-0682-20", "745679", "Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "2 puffs as needed",
               "asthma"),
    Medication("00049-4960-50", "312940", "Sertraline 50 MG Oral Tablet", "50 mg daily", "depression"),
    Medication("00074-4341-90", "966222", "Levothyroxine sodium 0.05 MG Oral Tablet", "50 mcg daily",
               "hypothyroidism"),
    Medication("00093-5057-56", "40790", "Pantoprazole 40 MG Delayed Release Oral Tablet", "40 mg daily", "gerd"),
    Medication("00056-0172-70", "855332", "Warfarin sodium 5 MG Oral Tablet", "5 mg daily", "afib"),
]

FACILITIES = {
    "FAC-NORTH": "Northside General Hospital",
    "FAC-SOUTH": "South Valley Medical Center",
    "FAC-EAST": "Eastbrook Community Clinic",
    "FAC-WEST": "Westfield Family Health",
}
ENCOUNTER_TYPES = {"AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient"}
EMAIL_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "inbox.example.org"]
INSURERS = ["W", "H", "K", "U", "X"]  # member-id prefixes of the simulated health plans


@dataclass(frozen=True)
class Pools:
    """Arrays the vectorised generator samples from, with their sampling probabilities."""

    female_first: np.ndarray
    female_p: np.ndarray
    male_first: np.ndarray
    male_p: np.ndarray
    last: np.ndarray
    last_p: np.ndarray
    street_names: np.ndarray
    street_suffixes: np.ndarray
    city: np.ndarray
    state: np.ndarray
    zip: np.ndarray
    area_code: np.ndarray
    city_p: np.ndarray


def _weighted(table: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    names = np.array(list(table.keys()), dtype=object)
    weights = np.array(list(table.values()), dtype=float)
    return names, weights / weights.sum()


@cache
def pools() -> Pools:
    """Load the name and place pools once per process."""
    female, female_p = _weighted(_Person.first_names_female)
    male, male_p = _weighted(_Person.first_names_male)
    last, last_p = _weighted(_Person.last_names)
    with resources.files(__package__).joinpath("data/cities.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    weights = np.array([float(r["weight"]) for r in rows])
    return Pools(
        female_first=female, female_p=female_p, male_first=male, male_p=male_p, last=last, last_p=last_p,
        street_names=np.array(sorted(set(_Person.last_names) | set(_Person.first_names_female)), dtype=object),
        street_suffixes=np.array(_Address.street_suffixes[:40], dtype=object),
        city=np.array([r["city"] for r in rows], dtype=object),
        state=np.array([r["state"] for r in rows], dtype=object),
        zip=np.array([r["zip"] for r in rows], dtype=object),
        area_code=np.array([r["area_code"] for r in rows], dtype=object),
        city_p=weights / weights.sum(),
    )
