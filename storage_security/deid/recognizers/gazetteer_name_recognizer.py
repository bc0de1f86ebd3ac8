"""Names found by a gazetteer: a known given name followed by a capitalised word that is not a common word.

The given names are Faker's US list (SSA baby-name data, 690 names; Faker is MIT and installed). A capitalised
word after one is taken for a surname unless it is in the safe-word list of clinical and common English words
(the i2b2 systems' stop list idea), so "Grace Hospital" or "Will Continue" are not names.
"""

from __future__ import annotations

from faker.providers.person.en_US import Provider as _UsPerson
from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

# Capitalised words that follow a given name in notes without being a surname.
SAFE_WORDS = (
    "Hospital", "Clinic", "Center", "Centre", "Medical", "Health", "Memorial", "General", "Regional", "University",
    "Institute", "Street", "Avenue", "Road", "Drive", "Lane", "Court", "County", "Patient", "Pt", "Continue",
    "Start", "Stop", "Discharge", "Admission", "History", "Exam", "Plan", "Assessment", "Diagnosis", "Impression",
    "Findings", "Report", "Note", "Notes", "Follow", "Return", "Call", "Please", "Thank", "Thanks", "Dear", "Today",
    "Yesterday", "Tomorrow", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December", "Pain", "Blood", "Heart", "Chest", "Lung", "Lungs", "Abdomen", "Skin", "Labs", "Lab", "Vitals",
    "Allergies", "Medications", "Meds", "Social", "Family", "Past", "Surgical", "Review", "Systems", "Physical",
    "Signed", "Electronically", "Dictated", "MD", "RN", "NP", "DO", "Is", "Was", "Has", "Had", "And", "Or", "The",
    "Of", "In", "On", "At", "To", "For", "With", "From", "By", "He", "She", "They", "We", "I", "It", "This", "That",
    "No", "Yes", "Not", "Will", "Can", "May", "Should", "Would", "Could", "Did", "Does", "Syndrome", "Disease",
    "Cancer", "Type", "Insulin", "Metformin", "Unit", "Floor", "Room", "Ward", "Service", "Team", "Care",
)
_GIVEN = "|".join(sorted({n for n in _UsPerson.first_names if n.isalpha()}, key=len, reverse=True))
_SAFE = "|".join(SAFE_WORDS)
_SURNAME = rf"(?!(?:{_SAFE})\b)\p{{Lu}}[\p{{Ll}}\p{{Lu}}]*\p{{Ll}}(?:['’-]\p{{Lu}}?\p{{Ll}}+)*"


class GazetteerNameRecognizer(HealthcarePatternRecognizer):
    """A known given name and a capitalised non-safe word after it ("Julio Verdugo", "Hannes Winkler")."""

    ENTITY = "PERSON"
    CASE_SENSITIVE = True
    PATTERNS = (
        Pattern("Given name and surname",
                rf"\b(?:{_GIVEN})(?:\s+\p{{Lu}}\.)?\s+(?:(?:da|de|van|von|del|di|le)\s+)?{_SURNAME}\b", 0.6),
    )
    CONTEXT = ("patient", "name", "dr", "mr", "ms")
