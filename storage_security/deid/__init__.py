"""De-identification: PHI detection in notes (``detection``, recognizers in ``recognizers/``, scoring in
``evaluation``), masking operators and their configuration (``operators``, ``masking``), column classes
(``classification``), the re-identification risk gate (``risk``), publication to the ``deidentified`` zone
(``deidentify``, notes on Spark in ``spark``) and the ``medguard deidentify`` command (``cli``)."""
