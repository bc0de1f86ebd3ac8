"""``medguard_surrogate``: a realistic stand-in of the same kind, so a masked note still reads as a note.

A keyed fake name for a name, the patient's shifted date for a date (the date-shift operator's own code), a
fake street, city, phone, e-mail; identifiers with no safe stand-in are redacted.
"""

from __future__ import annotations

from typing import Any

from storage_security.deid.operators._base import MedguardOperator, need
from storage_security.deid.operators.date_shift import DateShiftOperator
from storage_security.deid.operators.generalize import zip3
from storage_security.deid.operators.masking_keys import MaskingKeys


class SurrogateOperator(MedguardOperator):
    """A stand-in of the entity's kind; the same mention always gets the same stand-in.

    params: ``keys`` (:class:`MaskingKeys`), ``days`` (the patient's date offset), ``entity_type`` (from the
    engine), optionally ``scope`` (the patient: a person's name gets one stand-in across the patient's notes).
    Notes only: there is no column form.
    """

    NAME = "medguard_surrogate"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        params = need(params, "keys", "days", "entity_type")
        if not isinstance(params["keys"], MaskingKeys):
            raise ValueError("surrogate 'keys' must be MaskingKeys")
        DateShiftOperator().validate({"days": params["days"]})

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        params = params or {}
        keys: MaskingKeys = params["keys"]
        entity = params["entity_type"]
        scope = str(params.get("scope") or "")
        if entity == "PERSON":
            return keys.surrogate_name(text, scope=scope)
        n = keys.digest("surrogate", f"{entity}\x00{text.strip().lower()}")
        if entity == "DATE_TIME":
            return DateShiftOperator().operate(text, {"days": params["days"]})
        if entity == "AGE":
            return "90+"
        if entity == "ZIP_CODE":
            return (zip3(text) or "000") + "00"
        if entity == "STREET_ADDRESS":
            return f"{100 + n % 9800} {keys.surrogate_token(f'street {n}')} Street"
        if entity == "LOCATION":
            return f"{keys.surrogate_token(f'town {n}')}ville"
        if entity in ("PHONE_NUMBER", "FAX_NUMBER"):
            return f"(555) 010-{n % 10000:04d}"  # 555-01xx numbers are reserved for fiction
        if entity == "EMAIL_ADDRESS":
            return f"patient{n % 100000:05d}@example.invalid"
        if entity == "URL":
            return "https://example.invalid/redacted"
        if entity == "IP_ADDRESS":
            return f"192.0.2.{n % 254 + 1}"  # TEST-NET-1, never routed
        return f"[{entity}]"
