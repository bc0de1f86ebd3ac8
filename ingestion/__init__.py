"""Layer 1: reads EHR extracts, FHIR bundles, HL7 v2 messages and notes into the raw zone under data contracts."""
