"""Labelled clinical notes in many writers' styles, for measuring PHI detection beyond the generator's own notes.

:func:`styled_notes` writes discharge summaries, radiology and pathology reports, progress and nursing notes,
telephone encounters and letters, each from templates with ``{placeholder}`` PHI slots, in ALL-CAPS or Title-case
headers, with signatures ("Dictated by: JB/xx"), initials, titles, lowercase and hyphenated names, names that are
also English words, hospital and clinic names, dates in written, partial, two-digit-year and range forms, ages,
and identifiers after labels in many wordings. Output is deterministic for a seed and is in the labelled-note form
``deidentify evaluate`` reads (``{"text", "spans": [{"start", "end", "label"}], "style"}``).

Names come from Faker locales other than the ``en_US`` list medguard's name gazetteer is built from, plus
names that are also words, so a gazetteer hit is not given for free.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

__all__ = ["NOTE_TYPES", "styled_notes"]

_LOCALES = ("de_DE", "es_MX", "fr_FR", "it_IT", "pl_PL", "en_IN", "nl_NL", "pt_BR", "en_GB", "sv_SE")
_WORD_NAMES = (("Hope", "Price"), ("Will", "Marsh"), ("Bill", "Rich"), ("Rose", "Wood"), ("Summer", "Hill"),
               ("Grace", "Young"), ("Faith", "Stone"), ("Frank", "Long"), ("Ivy", "Banks"), ("Joy", "Fields"),
               ("Mark", "Bush"), ("Sandy", "Brown"), ("Dawn", "Green"), ("Iris", "Bell"), ("Amber", "Lane"))
_HOSPITALS = ("{city} General Hospital", "St. {last}'s Medical Center", "{last} Memorial Hospital",
              "{city} Regional Medical Center", "Mercy {city} Clinic", "{last} Family Practice",
              "University Hospital of {city}", "{city} Cancer Institute", "Our Lady of {last} Hospital")
_DOMAINS = ("quarkmail.io", "kl-net.de", "posteo.net", "fastmail.fm", "hospitalmail.org", "mylittleinbox.co",
            "rn-stmarys.org", "tutanota.com")

# Each template: text with {slot} placeholders; a slot's filler gives (text, label or None).
NOTE_TYPES: dict[str, tuple[str, ...]] = {
    "discharge": (
        "{H:DISCHARGE SUMMARY}\n{H:Patient}: {patient}    {H:MRN}: {mrn}\n{H:Admission Date}: {date}\n"
        "{H:Discharge Date}: {date}\n{H:Attending}: {title_doctor}\n\n{H:HISTORY OF PRESENT ILLNESS}:\n"
        "{first} is a {age}-year-old {sex} admitted to {hospital} on {date_words} with chest pain. "
        "Seen previously by {title_doctor} in {month_year}. {pronoun} was transferred from {hospital}.\n"
        "{H:HOSPITAL COURSE}: Stable. Cath on {date_partial}.\n{H:FOLLOW-UP}: with {title_doctor} on {date_partial}"
        " at {hospital}, {street}, {city}, {state} {zip}. Call {phone} with questions.\n"
        "Dictated by: {initials}/{typist}\nD: {date_2y}  T: {date_2y}\ncc: {title_doctor}",
    ),
    "radiology": (
        "{H:RADIOLOGY REPORT}\n{H:Name}: {last_comma_first}  {H:DOB}: {date}  {H:Acc #}: {account}\n"
        "{H:Exam}: CT chest with contrast, {date}\n{H:Comparison}: {date_2y}.\n{H:Findings}: No effusion. "
        "Stable 4 mm nodule compared with {month_year}.\n{H:Impression}: No acute process.\n"
        "Read by {doctor_plain}, MD, {hospital} Radiology. Electronically signed {date} {time}.",
    ),
    "pathology": (
        "{H:SURGICAL PATHOLOGY REPORT}\n{H:Patient}: {patient}  {H:Medical record number}: {mrn}\n"
        "{H:Specimen received}: {date_words}\n{H:Submitting physician}: {title_doctor}\n"
        "{H:Diagnosis}: Benign fibroadipose tissue.\nGrossed by {initials_dotted}. Reviewed by {doctor_plain}, MD "
        "({hospital}) on {date}.",
    ),
    "progress": (
        "{H:PROGRESS NOTE}  {date}\nS: {mr_last} returns for follow-up; last seen {date_partial}. {pronoun} "
        "reports doing well since {month_year}. Lives with {relation} {relative} in {city}.\n"
        "O: BP 128/76. Wt 82 kg.\nA/P: HTN, continue lisinopril. {age_phrase}\nRTC {date_range}. "
        "Patient portal username {username}; {H:member ID} is {member}.\n{doctor_plain}, {degree}",
        "Pt {patient_lower} seen today ({date_2y}). {age}yo, hx DM2. {H:Insurance}: member no. {member}. "
        "Billing account {account}. Spoke with {title_doctor} re: labs from {date_words}.\n-- {initials}",
    ),
    "nursing": (
        "{H:NURSING NOTE} {date} {time}\nPatient {patient} resting comfortably. Family ({relation} {relative}) at "
        "bedside, phone {phone}. Call light in reach. {nurse}, RN\n"
        "Reported to {nurse_first} {nurse_last_lower}, charge nurse, at {time}.",
    ),
    "telephone": (
        "{H:TELEPHONE ENCOUNTER}\n{H:Caller}: {relation} {relative} ({phone})\n{H:Re}: {patient}, {H:DOB} "
        "{date}\nCalled on {date_words} asking about refill. Pharmacy fax {fax}. Advised to e-mail {email} "
        "or use {url}. Callback {phone}. -- {nurse}, RN",
    ),
    "letter": (
        "{date_words}\n\n{title_doctor}\n{hospital}\n{street}\n{city}, {state} {zip}\n\nRe: {patient}, "
        "date of birth {date}\n\nDear Dr. {doc_last},\nThank you for referring {mr_last}, {age_phrase_bare}, "
        "whom I saw on {date_words}. Driver's license {license} and SSN {ssn} were verified for the "
        "disability form. {H:Member ID} {member}.\n\nSincerely,\n\n{doctor_plain}, {degree}\n{hospital}\n"
        "email {email} | tel {phone} | fax {fax}",
    ),
}

_SLOT = re.compile(r"\{([A-Za-z_0-9]+)(?::([^}]*))?\}")


class _Person:
    def __init__(self, first: str, last: str) -> None:
        self.first, self.last = first, last


class _Filler:
    """Draws every slot's value; people are fixed per note so names repeat as they do in real notes."""

    def __init__(self, rng: random.Random, fakers: list[Any], caps: bool) -> None:
        self.rng, self.fakers, self.caps = rng, fakers, caps
        self.patient = self._person()
        self.doctor = self._person()
        self.nurse = self._person()
        self.relative = self._person()
        # it_IT's city() draws from a set (its order changes with the process's hash seed): not used for cities.
        self.city = rng.choice([f for f in fakers if "it_IT" not in f.locales]).city()

    def _faker(self) -> Any:
        return self.rng.choice(self.fakers)

    def _person(self) -> _Person:
        if self.rng.random() < 0.2:
            return _Person(*self.rng.choice(_WORD_NAMES))
        f = self._faker()
        last = f.last_name()
        if self.rng.random() < 0.15:
            last = f"{last}-{f.last_name()}"
        return _Person(f.first_name().split()[0], last)

    def _date(self) -> Any:
        from datetime import date, timedelta

        return date(2019, 1, 1) + timedelta(days=self.rng.randrange(2400))

    def fill(self, slot: str, arg: str | None) -> list[tuple[str, str | None]]:
        r, p, d = self.rng, self.patient, self.doctor
        if slot == "H":
            return [(arg.upper() if self.caps else arg, None)]
        simple: dict[str, Callable[[], list[tuple[str, str | None]]]] = {
            "patient": lambda: [(f"{p.first} {p.last}", "PERSON")],
            "patient_lower": lambda: [(f"{p.first.lower()} {p.last.lower()}", "PERSON")],
            "first": lambda: [(p.first, "PERSON")],
            "last_comma_first": lambda: [(f"{p.last.upper()}, {p.first.upper()}", "PERSON")],
            "mr_last": lambda: [(r.choice(("Mr. ", "Ms. ", "Mrs. ")), None), (p.last, "PERSON")],
            "title_doctor": lambda: [("Dr. ", None), (r.choice((f"{d.first} {d.last}", d.last,
                                                                   f"{d.first[0]}. {d.last}")), "PERSON")],
            "doc_last": lambda: [(d.last, "PERSON")],
            "doctor_plain": lambda: [(f"{d.first} {d.last}", "PERSON")],
            "initials": lambda: [(f"{d.first[0]}{d.last[0]}".upper(), "PERSON")],
            "initials_dotted": lambda: [(f"{self.nurse.first[0]}.{self.nurse.last[0]}.", "PERSON")],
            "typist": lambda: [(f"{self.nurse.first[0]}{self.nurse.last[0]}".lower(), "PERSON")],
            "nurse": lambda: [(f"{self.nurse.first} {self.nurse.last}", "PERSON")],
            "nurse_first": lambda: [(self.nurse.first, "PERSON")],
            "nurse_last_lower": lambda: [(self.nurse.last.lower(), "PERSON")],
            "relative": lambda: [(f"{self.relative.first} {p.last}", "PERSON")],
            "relation": lambda: [(r.choice(("daughter", "son", "wife", "husband", "niece", "neighbor")), None)],
            "pronoun": lambda: [(r.choice(("He", "She")), None)],
            "sex": lambda: [(r.choice(("man", "woman", "male", "female")), None)],
            "degree": lambda: [(r.choice(("MD", "DO", "NP", "PA-C")), None)],
            "age": lambda: self._age(),
            "age_phrase": lambda: [("Now ", None), *self._age(), (" years old.", None)],
            "age_phrase_bare": lambda: [("aged ", None), *self._age()],
            "hospital": lambda: [(r.choice(_HOSPITALS).format(city=self.city, last=self._person().last),
                                  "HOSPITAL")],
            "city": lambda: [(self.city, "LOCATION")],
            "state": lambda: [(r.choice(("MA", "NY", "Ohio", "CA", "TX")), None)],
            "street": lambda: [(f"{r.randrange(1, 9999)} {self._faker().street_name()}", "STREET_ADDRESS")],
            "zip": lambda: [(f"{r.randrange(1000, 99999):05d}", "ZIP_CODE")],
            "phone": lambda: [(r.choice(("({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "+1 {a} {b} {c}")).format(
                a=r.randrange(201, 989), b=r.randrange(200, 999), c=f"{r.randrange(10000):04d}"), "PHONE_NUMBER")],
            "fax": lambda: [(f"{r.randrange(201, 989)}-{r.randrange(200, 999)}-{r.randrange(10000):04d}", "FAX")],
            "email": lambda: [(f"{p.first.lower()}.{p.last.lower()}{r.randrange(99)}@{r.choice(_DOMAINS)}",
                               "EMAIL_ADDRESS")],
            "url": lambda: [(f"https://{r.choice(('mychart', 'portal', 'pt'))}.{r.choice(_DOMAINS)}/"
                             f"{r.choice(('login', 'msg', 'u'))}/{r.randrange(10**6)}", "URL")],
            "username": lambda: [(f"{p.first[0].lower()}{p.last.lower()}{r.randrange(100)}", "USERNAME")],
            "mrn": lambda: [(r.choice(("{n}", "MR-{n}", "{n}-{k}")).format(n=r.randrange(10**6, 10**8),
                                                                             k=r.randrange(10)),
                             "MEDICAL_RECORD_NUMBER")],
            "member": lambda: [(r.choice(("{a}-{b}-{c}", "{a}{c}", "W{c}{b}")).format(
                a=r.choice(("HPX", "BCB", "AET", "UHC")), b=r.randrange(10, 99), c=r.randrange(10**4, 10**6)),
                "HEALTH_PLAN_ID")],
            "account": lambda: [(str(r.randrange(10**8, 10**10)), "ACCOUNT_NUMBER")],
            "license": lambda: [(f"{r.choice('ABCDFGHS')}{r.randrange(10**6, 10**8)}", "LICENSE_NUMBER")],
            "ssn": lambda: [(f"{r.randrange(100, 665)}-{r.randrange(10, 99)}-{r.randrange(1000, 9999)}", "US_SSN")],
            "time": lambda: [(r.choice(("{h}:{m:02d}", "{h}{m:02d}", "{h}:{m:02d} pm")).format(
                h=r.randrange(1, 12), m=r.randrange(60)), None)],
        }
        if slot in simple:
            return simple[slot]()
        day = self._date()
        forms = {
            "date": ("%m/%d/%Y", "%Y-%m-%d", "%-m/%-d/%Y", "%d-%b-%Y", "%B %-d, %Y", "%b %-d %Y", "%d.%m.%Y"),
            "date_2y": ("%m/%d/%y", "%-m/%-d/%y", "%-m-%-d-%y"),
            "date_words": ("%B %-d, %Y", "%-d %B %Y", "%A, %B %-d", "the {nth} of %B", "%B %-d"),
            "date_partial": ("%-m/%-d", "%B %-d", "%b %-d", "%m/%y"),
            "month_year": ("%B of %Y", "%B %Y", "%b %Y", "%m/%Y"),
        }
        if slot == "date_range":
            start = day.strftime(r.choice(("%-m/%-d", "%B %-d")))
            end = f"{day.month}/{day.day % 28 + 1}" if "/" in start else str(day.day % 28 + 1)
            return [(start, "DATE_TIME"), (r.choice(("-", " to ", " - ")), None), (end, "DATE_TIME")]
        fmt = r.choice(forms[slot])
        nth = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
        fmt = fmt.replace("{nth}", nth[min(day.day, 10) - 1])
        return [(day.strftime(fmt), "DATE_TIME")]

    def _age(self) -> list[tuple[str, str | None]]:
        age = self.rng.choice((self.rng.randrange(20, 89), self.rng.randrange(90, 104)))
        return [(str(age), "AGE" if age > 89 else None)]


def styled_notes(count: int, seed: int = 17) -> list[dict[str, Any]]:
    """``count`` labelled notes cycling through :data:`NOTE_TYPES`, deterministic for ``seed``."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = []
    for i, locale in enumerate(_LOCALES):
        fake = Faker(locale)
        fake.seed_instance(seed * 100 + i)
        fakers.append(fake)
    kinds = sorted(NOTE_TYPES)
    notes = []
    for n in range(count):
        kind = kinds[n % len(kinds)]
        template = rng.choice(NOTE_TYPES[kind])
        filler = _Filler(rng, fakers, caps=rng.random() < 0.5)
        spans, at = [], 0
        # _SLOT.split gives text, slot, arg, text, slot, arg, ...: walk it in threes.
        parts = _SLOT.split(template)
        text = []
        for i in range(0, len(parts), 3):
            pieces: list[tuple[str, str | None]] = [(parts[i], None)]
            if i + 1 < len(parts):
                pieces += filler.fill(parts[i + 1], parts[i + 2])
            for piece, label in pieces:
                if label is not None and piece:
                    spans.append({"start": at, "end": at + len(piece), "label": label})
                text.append(piece)
                at += len(piece)
        notes.append({"text": "".join(text), "spans": spans, "style": kind})
    return notes
