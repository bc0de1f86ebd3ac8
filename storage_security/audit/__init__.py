"""The audit trail: the hash-chained, head-signed event log (``log``, byte formats in ``_codec``) and the
activity monitor that raises alerts from it (``monitoring``)."""
