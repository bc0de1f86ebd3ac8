"""Street addresses: a house number, one to three capitalised words and a USPS street suffix, unit optional."""

from __future__ import annotations

from faker.providers.address.en_US import Provider as _UsAddress
from presidio_analyzer import Pattern

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

# USPS suffixes as written out (Faker carries the full USPS list) and their common abbreviations.
_ABBREVIATIONS = ("St", "Ave", "Rd", "Blvd", "Dr", "Ln", "Ct", "Pl", "Ter", "Hwy", "Pkwy", "Cir", "Sq", "Trl")
_SUFFIXES = "|".join(sorted({*_UsAddress.street_suffixes, *_ABBREVIATIONS}, key=len, reverse=True))
_UNIT = r"(?:,?\s+(?:Apt\.?|Suite|Ste\.?|Unit|#)\s*[A-Z0-9-]{1,6})?"
# Street types written before the name in French, Spanish, Portuguese, Italian, Catalan, Slavic and Balkan
# addresses ("8 Rue de Kairouan", "Avenida Forças Armadas 75", "Trg revolucije 61").
_TYPES_FIRST = (r"Rue|Avenue|Boulevard|Bd|Chemin|Impasse|All[ée]e|Place|Quai|Cours|Route|Calle|Avenida|Av|Paseo|"
                r"Camino|Carrera|Carretera|Plaza|Pza|Ronda|Traves[ií]a|Rua|Travessa|Largo|Pra[çc]a|Estrada|Rodovia|"
                r"Ladeira|Alameda|Via|Viale|Vicolo|Corso|Piazza|Piazzale|Contrada|Strada|Rotonda|Lungomare|Carrer|"
                r"Avinguda|Passeig|Trg|Ulica|Aleja|Ul|Al|Nám[ěe]st[ií]|Nám|Cesta|Ulice|Utca|Strasse|Straße")
_PARTICLES = r"(?:de|du|des|del|della|delle|dei|di|da|do|dos|das|la|le|les|el|lo|van|von|y|e|d['’])"
# Street words written as the end of the name: German, Dutch, Nordic, Slavic and Finnish.
_STREET_WORDS = (r"strasse|straße|gasse|weg|vej|gade|plein|laan|straat|plaats|allee|ulica|utca|cesta|ulice|vägen|"
                 r"gatan|gränd|veien|gata|tie|katu")


class StreetAddressRecognizer(HealthcarePatternRecognizer):
    """Case-sensitive so that "5 mg daily" and similar are not read as a street."""

    ENTITY = "STREET_ADDRESS"
    CASE_SENSITIVE = True
    PATTERNS = (
        Pattern("Street address",
                rf"\b\d{{1,6}}[ ]+(?:[NSEW]\.?[ ]+)?(?:[A-Z][a-z']+[ ]+){{1,3}}(?:{_SUFFIXES})\b\.?{_UNIT}", 0.7),
        Pattern("PO box", r"\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b", 0.7),
        # "Street 12, City, ST 12345" / "12 Street, City,  41-923": any country's order, any script's capitals.
        Pattern("Address with place and postal code",
                r"(?-i:(?:\b(?:ul|al|os|pl)\.[ ])?(?:\b\d{1,5}[A-Z]?[ ])?(?:\b\p{Lu}[\p{L}.'’-]*[ ]){0,3}"
                r"\b\p{Lu}[\p{L}.'’-]*(?:[ ]\d{1,5}[A-Z]?)?,[ ]+\p{Lu}[\p{L}'’.-]*(?:[ ][\p{L}'’.-]+){0,4},[ ]+"
                r"(?:\p{Lu}{2}\s+)?(?:\d{2,5}(?:[ -]\d{2,4})?|[A-Z]\d[A-Z]\s?\d[A-Z]\d))\b", 0.6),
        # A letter's street line: a house number and words, with "City, ST 12345" on the next line.
        Pattern("Street line above a place line",
                r"(?-i:\b\d{1,5}[A-Z]?[ ][^\n,]{3,40}"
                r"(?=\n[ ]*[^\n,]{2,40},[ ]+(?:\p{Lu}{2}|\p{Lu}\p{Ll}+)[ ]+\d{4,5}\b))", 0.6),
        # An address block written line by line (letters, forms, e-mail signatures): a street line, an optional
        # unit line, a place line and an optional "Country 12345" line.
        Pattern("Address block",
                r"(?-i:(?<=^[ >?]*)(?:\d{1,5}[A-Z]?[ ]\p{Lu}[^\n]{2,40}|\p{Lu}[\p{L}'’.-]+(?:[ ][\p{L}'’.-]+){0,3}"
                r"[ ]\d{1,5}[A-Z]?)(?:\n[ >?]*(?:Apt|Suite|Unit|Ste)\.?[ ]\d{1,5})?\n[ >?]*\p{Lu}[\p{L}'’.-]+"
                r"(?:[ ][\p{L}'’.-]+){0,3}[ ]*(?:\n\n?[ >?]*\p{Lu}[\p{L} ]+[ ]\d{3,5})?(?=\n|$))", 0.6),
        # Europe writes the number after the street: "Lindenstrasse 14", "Ørstedsvej 3", "Via Rezzonico 35 St.".
        Pattern("Street word then number",
                rf"(?-i:\b(?:\p{{Lu}}[\p{{L}}'’-]*[ ]){{0,2}}\p{{Lu}}[\p{{Ll}}'’-]*(?:{_STREET_WORDS})[ ]"
                rf"\d{{1,5}}[A-Za-z]?\b)",
                0.6),
        Pattern("Number then street word",
                rf"(?-i:\b\d{{1,5}}[A-Za-z]?[ ](?:\p{{Lu}}[\p{{L}}'’-]*[ ]){{0,2}}\p{{Lu}}[\p{{Ll}}\p{{Lu}}'’-]*"
                rf"(?i:{_STREET_WORDS})\b)", 0.6),
        Pattern("Street name, number and suffix",
                rf"(?-i:\b(?:{_PARTICLES}[ ])?\p{{Lu}}[\p{{L}}'’-]+"
                r"(?:[ ]\p{Lu}[\p{L}'’-]+){0,2}[ ]\d{1,5}[A-Za-z]?[ ]"
                r"(?:St\.?|Street|street|Ave\.?|Avenue|avenue|Rd\.?|Road|road)(?![\p{L}]))", 0.6),
        Pattern("Street and number after 'is at' or 'lives on'",
                r"(?<=\b(?i:is at|lives on|living on|located on|located at)[ ])"
                r"(?!(?-i:Room|Bed|Floor|Unit|Ward|Level|Gate|Building|Suite|Station|Bay|Page|Day|Week|Step|Stage|"
                r"Grade|Dose|Cycle|Line|Door|Exit|Terminal|Platform)\b)"
                r"(?-i:\p{Lu}[\p{L}'’-]+(?:[ ]\p{Lu}[\p{L}'’-]+){0,2}[ ]\d{1,5}[A-Za-z]?\b)"
                r"(?![ ]?(?i:weeks?|wks?|days?|months?|years?|yrs?|hours?|hrs?|min|mg|mcg|ml|units?|times?|am|pm|%))",
                0.6),
        # A street type before the name: with the house number before ("8 Rue de Kairouan", "94 boulevard Amiral
        # Courbet") or after it ("Avenida Forças Armadas 75", "Trg revolucije 61", "ul. Zuchów 65").
        Pattern("Number, street type and name",
                rf"(?-i:\b\d{{1,5}}[A-Za-z]?,?[ ](?i:{_TYPES_FIRST})\.?"
                rf"(?:[ ](?:{_PARTICLES}[ ]?)?\p{{Lu}}[\p{{L}}'’.-]*){{1,4}})", 0.6),
        Pattern("Street type, name and number",
                rf"(?-i:\b(?:{_TYPES_FIRST}|ul|al|os|pl)\.?[ ](?:(?:{_PARTICLES}[ ])?\p{{Lu}}\p{{Ll}}[\p{{L}}'’.-]*[ ]"
                rf"|(?<=\b(?:Trg|Ulica|Aleja|ul|al|os|pl)\.?[ ])\p{{Ll}}[\p{{L}}'’.-]*[ ])"
                rf"(?:(?:{_PARTICLES}[ ])?\p{{Lu}}\p{{Ll}}[\p{{L}}'’.-]*[ ]){{0,2}}"
                rf"\d{{1,5}}[A-Za-z]?\b(?![ ]?(?i:mg|mcg|ml|l|cc|units?|%|hours?|hrs?|days?|weeks?|min)\b))", 0.6),
        # Hungarian: the name, the type as a word of its own, the number ("Eötvös út 10.").
        Pattern("Name, type and number",
                r"(?-i:\b\p{Lu}[\p{L}'’-]*(?:[ ]\p{Lu}[\p{L}'’-]*)?[ ](?:út|utca|tér|körút|u\.)[ ]\d{1,5}\.?)", 0.6),
        Pattern("Unit", r"\b(?:Apt|Apartment|Suite|Ste|Unit)\.?\s*#?\s*\d[A-Z0-9-]{0,5}\b", 0.6),
        # An address in any country's form after words that introduce one: to the end of the clause.
        Pattern("Labelled address",
                r"(?<=\b(?i:address(?:es)?(?: is|:| here they are:)?|located at|lives at|living at|moved to|"
                r"resides at|sent to|send (?:it|this|them|a new one) to|mail(?:ed)? to|return (?:it )?to|"
                r"deliver(?:ed)? to|ship(?:ped)? to|taxi to|meet (?:you|me|us) at|it'?s in)\s+)"
                r"(?=(?-i:\p{Lu}|\d{1,5}[A-Z]?[ ]\p{Lu}|(?:ul|al|os|pl)\.))(?=[^\n?!;]{0,60}\d)"
                r"[^\n?!;]{4,80}?(?=\s*(?:[?!;]|\.(?:\s|$)|\n|$|,? and |,? for |,? in case |"
                r" after ))", 0.6),
    )
    CONTEXT = ("lives", "address", "resides", "street", "home")
