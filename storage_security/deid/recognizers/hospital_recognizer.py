"""Hospital, clinic and practice names ("Mercy Clinic", "St. Luke's Medical Center", "University Hospital of X")."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

_WORD = r"\p{Lu}[\p{L}'’.-]*"
_PARTICLE = r"(?:of|ob|der|den|van|von|de|del|la|le|du|da|am|an|sur|upon|on)"
_KIND = (r"(?:General[ ]|Community[ ]|Memorial[ ]|Regional[ ]|Children's[ ]|University[ ])?"
         r"(?:Hospital|Medical\s+Center|Medical\s+Centre|Clinic|Health\s+Center|Health\s+System|Infirmary|"
         r"Cancer\s+(?:Center|Institute)|Institute|Family\s+(?:Practice|Health|Medicine)|Medical\s+Group|Healthcare|"
         r"Hospice|Health\s+Partners|Physicians|"
         r"Nursing\s+Home|Rehabilitation\s+Center|Surgery\s+Center|Urgent\s+Care)")


class HospitalRecognizer(HealthcarePatternRecognizer):
    """The statistical model tags these ORG (not PHI to it); the trailing kind word gives them away.

    Reported as LOCATION: i2b2 counts hospitals among locations, and a hospital names where the patient was.
    """

    ENTITY = "LOCATION"
    CASE_SENSITIVE = True
    PATTERNS = (
        Pattern("Named facility",
                rf"\b(?:(?:St\.?|Saint|Our[ ]Lady[ ]of|Mount|Mt\.?)[ ])?(?:(?:{_WORD}|{_PARTICLE})[ ]){{0,4}}{_WORD}[ ]"
                rf"{_KIND}\b", 0.75),
        Pattern("Facility of place",
                rf"\b(?:University[ ])?(?:Hospital|Clinic|Medical[ ]Center)[ ]of[ ](?:the[ ])?{_WORD}"
                rf"(?:[ ]\p{{Lu}}[\p{{L}}'’-]*){{0,2}}(?<!Radiology|Pathology|Laboratory)", 0.75),
    )
    CONTEXT = ("hospital", "clinic", "transferred", "admitted", "center")
