"""Source readers: tabular extracts, FHIR R4 bundles, HL7 v2 messages (notes use the tabular reader)."""
