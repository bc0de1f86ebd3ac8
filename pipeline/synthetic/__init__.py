"""Synthetic EHR data: a seeded, deterministic population written as the source extracts a hospital sends.

Patients with PHI, encounters, LOINC vitals and labs, ICD-10-CM conditions, NDC medications, clinical notes
with ground-truth PHI spans, a documented diagnostic label, FHIR R4 bundles and HL7 v2 messages, with
realistic faults injected at a chosen rate.
"""

from pipeline.synthetic.generate import CHUNK_PATIENTS, FORMATS, SCHEMAS, GenerationSummary, generate
from pipeline.synthetic.notes import PHI_LABELS

__all__ = ["CHUNK_PATIENTS", "FORMATS", "PHI_LABELS", "SCHEMAS", "GenerationSummary", "generate"]
