"""Labelled sentences from Microsoft's presidio-evaluator templates and fake-identity table (text we did not write).

``tests/fixtures/presidio_evaluator/`` holds ``templates.txt`` (209 sentences with ``{{placeholder}}`` slots) and
``FakeNameGenerator.com_3000.csv`` (3,000 fake identities of many nationalities) from PyPI ``presidio-evaluator``
0.3.2 (MIT). :func:`template_notes` fills each template with one identity's values and labels the PHI slots;
slots that are not PHI under Safe Harbor (country, nationality, organisation, job, a year alone, an age below 90)
are filled but not labelled, so a detector that masks them loses precision, as it would on real text.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path
from typing import Any

__all__ = ["SLOT_LABELS", "template_notes"]

# presidio-evaluator's placeholder -> our gold label (None: filled, not PHI).
SLOT_LABELS: dict[str, str | None] = {
    "person": "PERSON", "name": "PERSON", "name_male": "PERSON", "name_female": "PERSON",
    "first_name": "PERSON", "first_name_male": "PERSON", "first_name_female": "PERSON",
    "first_name_nonbinary": "PERSON", "last_name": "PERSON", "last_name_male": "PERSON",
    "last_name_female": "PERSON", "prefix": None, "prefix_male": None, "prefix_female": None,
    "address": "STREET_ADDRESS", "street_name": "STREET_ADDRESS", "building_number": "STREET_ADDRESS",
    "secondary_address": "STREET_ADDRESS", "city": "LOCATION", "postcode": "ZIP_CODE", "zipcode": "ZIP_CODE",
    "state_abbr": None, "country": None, "nationality": None, "nation_woman": None, "nation_plural": None,
    "organization": None, "job": None, "year": None, "day_of_week": None,
    "credit_card_number": "ACCOUNT_NUMBER", "iban": "ACCOUNT_NUMBER", "phone_number": "PHONE_NUMBER",
    "email": "EMAIL_ADDRESS", "url": "URL", "ssn": "US_SSN", "ip_address": "IP_ADDRESS",
    "date_time": "DATE_TIME", "date_of_birth": "DATE_TIME", "us_driver_license": "LICENSE_NUMBER", "age": "AGE",
}
_SLOT = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")


def _values(row: dict[str, str], rng: random.Random) -> dict[str, str]:
    first, last = row["GivenName"], row["Surname"]
    male = row["Gender"] == "male"
    birthday = row["Birthday"]
    m, d, y = (int(x) for x in birthday.split("/"))
    months = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")
    card = _luhn("4" + "".join(str(rng.randrange(10)) for _ in range(14)))
    return {
        "person": f"{first} {last}", "name": f"{first} {last}", "name_male": f"{first} {last}",
        "name_female": f"{first} {last}", "first_name": first, "first_name_male": first,
        "first_name_female": first, "first_name_nonbinary": first, "last_name": last, "last_name_male": last,
        "last_name_female": last, "prefix": row["Title"], "prefix_male": "Mr." if male else row["Title"],
        "prefix_female": "Ms." if not male else row["Title"],
        "address": f"{row['StreetAddress']}, {row['City']}, {row['State']} {row['ZipCode']}",
        "street_name": row["StreetAddress"].split(" ", 1)[-1], "building_number": row["StreetAddress"].split(" ")[0],
        "secondary_address": f"Apt. {rng.randrange(1, 999)}", "city": row["City"], "postcode": row["ZipCode"],
        "zipcode": row["ZipCode"], "state_abbr": row["State"], "country": row["CountryFull"],
        "nationality": row["NameSet"], "nation_woman": f"{row['NameSet']} woman",
        "nation_plural": f"{row['NameSet']}s", "organization": row["Company"], "job": row["Occupation"],
        "year": str(y), "day_of_week": rng.choice(("Monday", "Tuesday", "Friday")),
        "credit_card_number": " ".join(card[i:i + 4] for i in range(0, 16, 4)),
        "iban": _iban(f"NWBK{rng.randrange(10**5, 10**6)}{rng.randrange(10**7, 10**8)}"),
        "phone_number": row["TelephoneNumber"], "email": row["EmailAddress"],
        "url": f"https://www.{row['Domain']}/{row['Username'].lower()}", "ssn": row["NationalID"] or
        f"{rng.randrange(100, 665)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}",
        "ip_address": ".".join(str(rng.randrange(1, 255)) for _ in range(4)),
        "date_time": rng.choice((f"{months[m - 1]} {d}, {y}", f"{m}/{d}/{y}", f"{d} {months[m - 1]}")),
        "date_of_birth": birthday, "us_driver_license": f"{rng.choice('ABDFGHS')}{rng.randrange(10**6, 10**8)}",
        "age": row["Age"],
    }


def _luhn(body: str) -> str:
    """``body`` with its Luhn check digit appended (card numbers as Faker writes them: valid)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def _iban(bban: str) -> str:
    """A British IBAN with valid ISO 13616 check digits, in groups of four."""
    numeric = "".join(str(int(c, 36)) for c in bban + "GB00")
    raw = f"GB{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def template_notes(folder: str | Path, *, count: int | None = None, seed: int = 17) -> list[dict[str, Any]]:
    """Each template filled once (or ``count`` sentences, cycling), as labelled notes; deterministic for ``seed``.

    Templates with no PHI slot are kept: they measure precision on PHI-free text.
    """
    folder = Path(folder)
    # A template writes its line breaks as the two characters "\\n".
    templates = [t.strip().replace("\\n", "\n") for t in (folder / "templates.txt")
                 .read_text(encoding="utf-8", errors="replace").splitlines() if t.strip()]
    with (folder / "FakeNameGenerator.com_3000.csv").open(encoding="utf-8-sig", newline="") as handle:
        people = list(csv.DictReader(handle))
    rng = random.Random(seed)
    notes = []
    for n in range(count if count is not None else len(templates)):
        template = templates[n % len(templates)]
        values = _values(rng.choice(people), rng)
        parts, spans, at = [], [], 0
        last = 0
        for match in _SLOT.finditer(template):
            parts.append(template[last:match.start()])
            at += match.start() - last
            slot = match.group(1).lower()
            value = values.get(slot, slot)
            label = SLOT_LABELS.get(slot)
            if slot == "age" and int(value) <= 89:
                label = None
            if label is not None:
                spans.append({"start": at, "end": at + len(value), "label": label})
            parts.append(value)
            at += len(value)
            last = match.end()
        parts.append(template[last:])
        notes.append({"text": "".join(parts), "spans": spans, "style": "presidio-evaluator"})
    return notes
