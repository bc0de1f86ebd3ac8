"""medguard's healthcare recognizers for Presidio, one per file, switched on by ``recognizers.yaml``.

Each is a :class:`presidio_analyzer.PatternRecognizer` with class-level ``PATTERNS`` and ``CONTEXT`` and, where
the identifier has one, a checksum in ``validate_result`` (NPI: Luhn; DEA: its check digit; VIN: mod 11).
:func:`enabled_recognizers` reads the YAML and builds the enabled ones.
"""

from __future__ import annotations

from importlib import import_module, resources
from pathlib import Path
from typing import Any

import yaml

from storage_security.deid.recognizers._base import HealthcarePatternRecognizer

__all__ = ["HealthcarePatternRecognizer", "enabled_recognizers", "recognizer_config"]


def recognizer_config(path: str | Path | None = None) -> dict[str, Any]:
    """The recognizer configuration: the packaged ``recognizers.yaml`` unless ``path`` names another file."""
    if path is None:
        text = resources.files(__package__).joinpath("recognizers.yaml").read_text()
    else:
        text = Path(path).read_text()
    config = yaml.safe_load(text) or {}
    if not isinstance(config.get("recognizers"), list):
        raise ValueError("a recognizer config needs a 'recognizers' list of {class, enabled}")
    return config


def enabled_recognizers(config: dict[str, Any] | None = None) -> list[HealthcarePatternRecognizer]:
    """Instances of every recognizer the configuration enables; an unknown class name is an error at load time."""
    config = config or recognizer_config()
    out = []
    for entry in config["recognizers"]:
        if not entry.get("enabled", True):
            continue
        module_name, _, class_name = str(entry["class"]).rpartition(".")
        module = import_module(f"{__package__}.{module_name}")
        cls = getattr(module, class_name, None)
        if cls is None or not issubclass(cls, HealthcarePatternRecognizer):
            raise ValueError(f"recognizers.yaml names {entry['class']!r}, which is not a medguard recognizer")
        out.append(cls())
    return out
