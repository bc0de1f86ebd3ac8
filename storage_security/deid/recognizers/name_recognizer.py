"""Personal names in clinical positions: after a title, a label, a relation or a verb of signing; before a degree."""

from __future__ import annotations

from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

# Unicode letters, hyphenated and apostrophe names ("O'Neil", "Raju-Sharma", "Åke"), surname particles.
_NAME = r"\p{Lu}[\p{Ll}\p{Lu}]*[\p{Ll}](?:['’-]\p{Lu}?[\p{Ll}]+)*"
_PARTICLE = r"(?:(?:da|de|del|della|der|di|du|van|von|le|la|bin|al|ten|ter|dos|das) )"
_TITLES = r"Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Sr|Fr|Rev"
# Words of one name are one space apart: two spaces or a line break end it ("Pt: Ann Lee  Medical record …").
_FULL = (rf"(?!(?:{_TITLES})\b){_NAME}(?: \p{{Lu}}\.)?(?: {_PARTICLE}{{0,2}}{_NAME}){{0,2}}")
_INITIAL_FIRST = rf"\p{{Lu}}\.\s*(?:\p{{Lu}}\.\s*)?{_PARTICLE}{{0,2}}{_NAME}"
_UPPER = r"\p{Lu}{2,}(?:['-]\p{Lu}{2,})*"
_LABELS = (r"Patient|Pt|Name|Patient name|Guarantor|Contact|Caller|Re|Attending|Attending physician|Physician|"
           r"Provider|PCP|Referring(?: physician)?|Submitting physician|Surgeon|Radiologist|Pathologist|Nurse|"
           r"Resident|Fellow|Author|Signed|Emergency contact|Next of kin|NOK|From|To|Attn|Cc")
_VERBS = (r"signed by|seen by|dictated by|transcribed by|read by|reviewed by|grossed by|examined by|"
          r"reported to|discussed with|spoke with|spoke to|called|referred by|referred to|evaluated by|"
          r"interpreted by|verified by|dear|thank you,?|sincerely,?|regards,?|cc:|per|said|told|asked|named|"
          r"hello|hi|thanks,?|"
          # e-mail and chat: greetings, sign-offs, "named him", and verbs whose agent is a person
          r"hey|good (?:morning|afternoon|evening),?|best,?|cheers,?|(?:best|kind|warm) regards,?|yours(?: truly)?,|"
          r"love,|named (?:him|her|them)|called (?:him|her|them)|under the name|on behalf of|ask for|"
          r"(?:written|sent|posted|shared|approved|prescribed|ordered|performed|authored|recommended|visited|"
          r"accompanied|forwarded|covered for) by")


class ClinicalNameRecognizer(HealthcarePatternRecognizer):
    """The statistical model misses names in note headers and signatures; their position gives them away."""

    ENTITY = "PERSON"
    CASE_SENSITIVE = True
    PATTERNS = (
        Pattern("Titled name", rf"(?<=\b(?i:{_TITLES})\.?\s+)(?:{_INITIAL_FIRST}|{_FULL})", 0.8),
        Pattern("Labelled name",
                rf"(?<=\b(?i:{_LABELS})\b\s*:\s*(?:(?:{_TITLES})\.?\s+)?)(?:{_INITIAL_FIRST}|{_FULL})", 0.85),
        Pattern("Name after 'name is'",
                rf"(?<=\b(?i:(?:my|his|her|their|your|last|first|maiden|full|middle|legal|sur)\s*name)"
                rf"(?:\s+is|\s*:|\?)\s+(?:(?:{_TITLES})\.?\s+)?)(?:{_INITIAL_FIRST}|{_FULL})", 0.75),
        Pattern("Labelled upper-case name",
                rf"(?<=\b(?i:{_LABELS})\b\s*:\s*){_UPPER},?\s+{_UPPER}(?:\s\p{{Lu}}\.)?", 0.8),
        Pattern("Relative",
                rf"(?<=\b(?:daughter|son|wife|husband|sister|brother|caregiver|mother|father|spouse|partner|"
                rf"friend|neighbor|neighbour|niece|nephew|grandson|granddaughter|aunt|uncle|guardian|mom|dad|kid|child|"
                rf"baby|boyfriend|girlfriend|fianc[ée]e?|cousin|roommate|grandmother|grandfather|grandma|grandpa|"
                rf"stepson|stepdaughter|stepmother|stepfather|sibling|twin|godson|goddaughter)"
                rf",?\s+){_FULL}", 0.7),
        Pattern("After a verb of signing",
                rf"(?<=\b(?i:{_VERBS})\s+(?:(?:{_TITLES})\.?\s+)?)(?:{_INITIAL_FIRST}|{_FULL})", 0.7),
        Pattern("Initials after a verb of signing",
                rf"(?<=\b(?i:{_VERBS})\s+)\p{{Lu}}\.\s?\p{{Lu}}\.(?:\s?\p{{Lu}}\.)?", 0.7),
        Pattern("Before a degree", rf"\b{_FULL}(?=,?\s+(?:MD|M\.D\.|DO|RN|NP|PA-C|PA|PhD|LPN|CNA|APRN|FNP|MSW|"
                rf"LCSW|RPh|PharmD|DPM|DDS)\b)", 0.75),
        Pattern("Dictation initials",
                r"(?<=\b(?i:dictated by|transcribed by|signed by)\s*:?\s*)\p{Lu}{2,3}/\p{L}{2,3}\b", 0.8),
        Pattern("Signature initials", r"(?<=(?:^|\n)\s*(?:--|-|/s/)\s*)\p{Lu}{2,3}\b", 0.6),
        Pattern("After 'Patient' without a colon",
                rf"(?<=\b(?:Patient|Pt|patient|pt)\.? )(?!(?i:is|was|has|had|denies|reports|seen|states)\b)"
                rf"(?:{_FULL})(?= (?:is|was|has|had|seen|resting|presents|reports|denies|states|returns)\b)", 0.7),
        # Lower-case names ("pt fadime stumpf seen today") are known by the same position.
        Pattern("Lower-case name after 'Pt'",
                r"(?<=\b(?i:pt|patient)\.? )(?!(?:is|was|has|had|denies|reports|seen|states|with|for|and)\b)"
                r"\p{Ll}+(?:-\p{Ll}+)? \p{Ll}+(?:-\p{Ll}+)?(?= (?:seen|is|was|presents|reports|returns)\b)", 0.6),
        Pattern("Author of a quoted message", rf"{_FULL}(?= (?:wrote|writes|replied|commented|posted):)", 0.7),
        Pattern("Name before age",
                rf"(?!(?:Patient|Pt|He|She|They|This|Client|Resident)\b){_FULL}(?=\s+is\s+an?\s+\d{{1,3}}[- ]y)", 0.7),
        Pattern("Possessive before clinical word", rf"(?<=\bto\s+){_FULL}(?=,\s+(?:charge nurse|RN|MD))", 0.6),
    )
    CONTEXT = ("patient", "name", "dr", "mr", "ms", "signed")
