"""Official FHIR R4 examples (tests/fixtures/fhir, CC0) defective for loading, with the rule each breaks."""

# What the reader refuses: a resource with nothing to join on or no patient to file it under.
READER_DEFECTS = {
    "Condition-example2.json": "fhir:code",  # code is text only ("Asthma"): no coding to join on
    "Observation-decimal.json": "fhir:reference",  # no subject at all
    "Observation-vp-oyster.json": "fhir:reference",  # subject is a display text alone
    "Observation-example-genetics-3.json": "fhir:code",  # code is text only
    "Observation-example-genetics-4.json": "fhir:code",
    "Observation-example-genetics-5.json": "fhir:code",
    "Observation-eye-color.json": "fhir:code",
    "Procedure-education.json": "fhir:reference",  # subject is a display text alone
    "Procedure-ob.json": "fhir:reference",
}
# What the contracts refuse on top, once the reader has mapped a resource.
LOAD_DEFECTS = {
    **READER_DEFECTS,
    "MedicationDispense-meddisp0308.json": "ndc_code:code_system",  # NDC 2501-813-16 has 9 digits, not 10
    "MedicationRequest-medrx0330.json": "ndc_code:code_system",  # NDC 2501-813-16
}
